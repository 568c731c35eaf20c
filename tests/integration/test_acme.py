"""ACME against Debian's pebble: a frontend with ``tls.acme`` gets a certificate issued
over HTTP-01 answered by HAProxy itself (runtime map, no reload), kept in the LB host's
state dir, and renewed once two thirds of its lifetime have passed, served through the
runtime API with 0 reloads; the real CLI, a real HAProxy."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator

import docker
import pytest
from acme_support import Pebble, aged_certificate
from cryptography import x509
from deploy_support import Deployment, free_port

pytestmark = pytest.mark.integration  # pebble and openssl: .ci/setup installs them

DOMAIN = "shop.acme.test"


def served(port: int) -> x509.Certificate:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", DOMAIN], check=False, input=b"", capture_output=True,
                       timeout=20)
    return x509.load_pem_x509_certificate(r.stdout)


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("acme"), docker_client)
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def pebble(dep: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    p = Pebble(tmp_path_factory.mktemp("pebble"), http_port=dep.port)
    yield p
    p.stop()


def test_acme_issuance_then_renewal_without_reload(
        dep: Deployment, pebble: Pebble, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pebble.ca_bundle))
    code, out = dep.apply()
    assert code == 0, out
    https_port = free_port()
    dep.edit("loadbalancer.yaml", "frontends:\n",
             f"frontends:\n  - name: shop\n    bind: \"127.0.0.1:{https_port}\"\n"
             f"    tls:\n      acme:\n        directory: {pebble.directory}\n"
             f"        domains: [{DOMAIN}]\n        email: ops@acme.test\n"
             "    default_service: web\n", "ACME frontend")
    first = dep.four_runs()
    assert [a["kind"] for a in first["actions"]] == ["configure-haproxy", "obtain-certificate"]
    cert = served(https_port)
    assert "Pebble Intermediate" in cert.issuer.rfc4514_string(), cert.issuer
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [DOMAIN]
    acme_dir = dep.haproxy.paths.root / "acme"
    for name in ("account.key", "shop.pem"):
        assert stat.S_IMODE((acme_dir / name).stat().st_mode) == 0o600, name
    assert not (dep.repo / "acme").exists()
    # The challenges were taken out of HAProxy's map again.
    assert dep.haproxy.stats.command(f"show map {acme_dir}/challenges.map").strip() == ""

    # Two thirds of the lifetime used: renewed within one pass, served with 0 reloads.
    (acme_dir / "shop.pem").write_text(aged_certificate(DOMAIN, days_used=61, days_left=29))
    reloads = dep.reloads()
    first = dep.four_runs()
    assert [a["kind"] for a in first["actions"]] == ["obtain-certificate"], first
    assert "renewal due" in first["actions"][0]["reason"]
    renewed = served(https_port)
    assert "Pebble Intermediate" in renewed.issuer.rfc4514_string()
    assert renewed.serial_number != cert.serial_number
    assert dep.reloads() == reloads
