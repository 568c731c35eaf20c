"""Certificates renewed at the same path are noticed by content and served through the
runtime API within one pass, with no reload (issue 13, part 3), against a real HAProxy
and the real CLI. The served certificate is read with ``openssl s_client``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment, free_port

pytestmark = pytest.mark.integration  # openssl: .ci/setup installs it


def make_cert(path: Path, cn: str) -> str:
    """A new self-signed certificate and key at ``path`` (replaced atomically, as a
    renewal tool does); its serial, as HAProxy prints it."""
    tmp = path.with_suffix(".tmp")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    f"/CN={cn}", "-keyout", str(tmp), "-out", str(tmp)],
                   check=True, capture_output=True)
    tmp.replace(path)
    return serial_of(path.read_bytes())


def serial_of(pem: bytes) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem,
                         check=True, capture_output=True).stdout.decode()
    return out.strip().removeprefix("serial=").upper().lstrip("0")


def served_serial(port: int, name: str = "site.test") -> str:
    """The serial of the certificate HAProxy presents on ``port`` (openssl s_client)."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", name], check=False, input=b"", capture_output=True,
                       timeout=20)
    return serial_of(r.stdout)


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("certs"), docker_client)
    yield d
    d.cleanup()


def test_renewed_certificate_is_served_within_one_pass_without_reload(
        dep: Deployment, tmp_path: Path) -> None:
    cert = tmp_path / "site.pem"
    first_serial = make_cert(cert, "site.test")
    https_port = free_port()
    dep.edit("loadbalancer.yaml", "frontends:\n",
             f"frontends:\n  - name: https\n    bind: \"127.0.0.1:{https_port}\"\n"
             f"    tls:\n      certificate: {cert}\n    default_service: web\n", "https")
    code, out = dep.apply()
    assert code == 0, out
    assert served_serial(https_port) == first_serial

    # Renewed at the same path: nothing in git changed, the file's content did.
    second_serial = make_cert(cert, "site.test")
    assert second_serial != first_serial
    reloads = dep.reloads()
    first = dep.four_runs()
    assert [a["kind"] for a in first["actions"]] == ["replace-certificate"], first
    action = first["actions"][0]
    assert action["path"] == str(cert)
    assert (action["old_serial"], action["serial"]) == (first_serial, second_serial)
    assert served_serial(https_port) == second_serial
    assert dep.reloads() == reloads  # served through the runtime API: 0 reloads

    # Key material never shows in a plan or a pass's output.
    key_line = next(line for line in cert.read_text().splitlines()
                    if line and not line.startswith("-----"))
    code, text = dep.cli("history")
    for shown in (str(first), out, text):
        assert "PRIVATE KEY" not in shown and key_line not in shown


def test_certificate_file_that_is_not_a_certificate_fails_the_pass_naming_it(
        dep: Deployment, tmp_path: Path) -> None:
    cert = tmp_path / "broken.pem"
    serial = make_cert(cert, "site.test")
    https_port = free_port()
    dep.edit("loadbalancer.yaml", "  - name: https\n",
             f"  - name: https2\n    bind: \"127.0.0.1:{https_port}\"\n"
             f"    tls:\n      certificate: {cert}\n    default_service: web\n"
             "  - name: https\n", "second https frontend")
    code, out = dep.apply()
    assert code == 0, out
    reloads = dep.reloads()
    secret_line = cert.read_text().splitlines()[1]
    cert.write_text(cert.read_text().replace("CERTIFICATE", "NOTACERT"))
    code, out = dep.apply()
    assert code == 1, out
    assert f"certificate file {cert}: no CERTIFICATE block" in out, out
    assert secret_line not in out
    assert served_serial(https_port) == serial  # HAProxy kept serving what it had
    assert dep.reloads() == reloads
