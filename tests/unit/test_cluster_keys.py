"""etcd mode, the pure parts of the client: the key layout and the wire form of
transactions (reconciler.cluster.keys, reconciler.cluster.etcd)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from reconciler.cluster.etcd import (
    Op,
    check_settings,
    created_never,
    lease_is,
    prefix_end,
    value_is,
)
from reconciler.cluster.keys import KeyNameError, Keys
from reconciler.coordination import EtcdSettings
from reconciler.errors import ClusterError, ReconcilerError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_every_key_of_an_environment_is_under_its_prefix() -> None:
    k = Keys("r1a2b3c4d", "production")
    assert k.prefix == "/reconciler/r1a2b3c4d/production/"
    assert k.leader == "/reconciler/r1a2b3c4d/production/leader"
    assert k.pool("web") == "/reconciler/r1a2b3c4d/production/pool/web"
    assert k.desired("app1") == "/reconciler/r1a2b3c4d/production/hosts/app1/desired"
    assert k.report("app1") == "/reconciler/r1a2b3c4d/production/hosts/app1/report"
    assert k.app_report("app1") == "/reconciler/r1a2b3c4d/production/hosts/app1/app-report"
    assert k.structure("edge") == "/reconciler/r1a2b3c4d/production/lb/edge"
    assert k.structure("edge").startswith(k.structures)
    assert not k.pool("web").startswith(k.structures)
    for key in (k.leader, k.pool("web"), k.desired("a"), k.report("a"), k.pools, k.hosts):
        assert key.startswith(k.prefix)
    # environments of one instance, and instances, do not see each other's keys
    assert not Keys("r1a2b3c4d", "prod").leader.startswith(k.prefix)
    assert not Keys("r1a2b3c4d", "production").prefix.startswith(Keys("r1", "production").prefix)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "../x", "a b", "-x", "é", "x" * 129, "a\nb"])
def test_a_name_that_would_reach_other_keys_is_refused(bad: str) -> None:
    with pytest.raises(KeyNameError) as exc:
        Keys("inst", "env").report(bad)
    assert repr(bad) in str(exc.value) and "host" in str(exc.value)
    with pytest.raises(ReconcilerError):
        Keys(bad, "env")
    with pytest.raises(ReconcilerError):
        Keys("inst", bad)


def test_prefix_end_is_the_first_key_after_every_key_under_the_prefix() -> None:
    assert prefix_end("/a/") == "/a0"
    assert prefix_end("/reconciler/i/e/") == "/reconciler/i/e0"


def test_transactions_take_etcds_wire_form() -> None:
    assert created_never("/k").to_json() == {
        "key": b64("/k"), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    assert lease_is("/k", 42).to_json()["lease"] == "42"
    assert value_is("/k", b"me").to_json()["value"] == b64("me")
    assert Op("put", "/k", b"v", lease=7).to_json() == {
        "request_put": {"key": b64("/k"), "value": b64("v"), "lease": "7"}}
    assert Op("put", "/k", b"v").to_json() == {"request_put": {"key": b64("/k"), "value": b64("v")}}
    assert Op("delete", "/p/", prefix=True).to_json() == {
        "request_delete_range": {"key": b64("/p/"), "range_end": b64("/p0")}}
    assert Op("get", "/k").to_json() == {"request_range": {"key": b64("/k")}}


def _settings(tmp_path: Path, endpoints: tuple[str, ...]) -> EtcdSettings:
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_text("x")
    return EtcdSettings(endpoints, str(tmp_path / "ca"), str(tmp_path / "cert"),
                        str(tmp_path / "key"))


@pytest.mark.parametrize("endpoint", ["http://10.0.0.1:2379", "10.0.0.1:2379",
                                      "https://10.0.0.1:2379/v3", "https://:2379",
                                      "https://10.0.0.1:99999"])
def test_an_endpoint_that_is_not_https_host_port_is_refused(tmp_path: Path, endpoint: str) -> None:
    with pytest.raises(ClusterError, match="etcd endpoint") as exc:
        check_settings(_settings(tmp_path, ("https://10.0.0.2:2379", endpoint)))
    assert repr(endpoint) in str(exc.value)


def test_a_missing_tls_file_is_refused_naming_it(tmp_path: Path) -> None:
    s = _settings(tmp_path, ("https://127.0.0.1:2379",))
    check_settings(s)
    (tmp_path / "key").unlink()
    with pytest.raises(ClusterError, match=r"etcd key file '.*/key' does not exist"):
        check_settings(s)
