"""The etcd client's reading of answers (reconciler.cluster.etcd), with a stand-in for
etcd3gw's per-endpoint client: which answers fail over to the next endpoint, and that a
bare transaction of compares is sent with a read (linearizable, never served from one
member's own state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.cluster.etcd import Etcd, created_never
from reconciler.coordination import EtcdSettings
from reconciler.errors import EtcdUnavailable


class Endpoint:
    """Answers every POST with the next of ``answers``; records the bodies."""

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, Any]] = []

    def get_url(self, path: str) -> str:
        return path

    def post(self, url: str, json: Any = None) -> dict[str, Any]:
        self.sent.append((url, json))
        return self.answers.pop(0)


def client(tmp_path: Path, *endpoints: Endpoint) -> Etcd:
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_text("x")
    e = Etcd(EtcdSettings(tuple(f"https://127.0.0.1:{2379 + i}" for i in range(len(endpoints))),
                          str(tmp_path / "ca"), str(tmp_path / "cert"), str(tmp_path / "key")))
    e._clients = list(endpoints)  # type: ignore[assignment]
    return e


NO_LEADER = {"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}}


def test_an_error_in_a_keepalive_answer_fails_over_and_is_not_a_lost_lease(
        tmp_path: Path) -> None:
    first = Endpoint(NO_LEADER)
    second = Endpoint({"result": {"ID": "7", "TTL": "5"}})
    assert client(tmp_path, first, second).keepalive(7) == 5
    assert len(first.sent) == len(second.sent) == 1


def test_an_error_on_every_endpoint_is_unavailable_naming_why(tmp_path: Path) -> None:
    e = client(tmp_path, Endpoint(NO_LEADER), Endpoint(NO_LEADER))
    with pytest.raises(EtcdUnavailable, match="etcdserver: no leader"):
        e.keepalive(7)


def test_a_lease_that_is_gone_renews_to_zero(tmp_path: Path) -> None:
    assert client(tmp_path, Endpoint({"result": {"ID": "7"}})).keepalive(7) == 0


def test_a_bare_check_of_compares_is_sent_with_a_read_of_its_key(tmp_path: Path) -> None:
    ep = Endpoint({"succeeded": True, "header": {"revision": "3"}})
    assert client(tmp_path, ep).txn([created_never("/k")], []).succeeded
    (_, body), = ep.sent
    assert body["success"] == [{"request_range": {"key": "L2s="}}]
