"""Transports and the container steps raise the project's errors, never a raw OSError,
paramiko or Docker SDK exception: each says which host (or container) and what failed.
No Docker engine or SSH server needed: the failures are made with files and fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.errors
import paramiko
import pytest
import requests
from support import spec

from reconciler.apply.containers import (
    ContainerError,
    create_and_start,
    stop_and_remove,
    wait_healthy,
)
from reconciler.desired.policy import SecretRules
from reconciler.errors import ReconcilerError
from reconciler.model import HealthCheck, Host, SshConnection
from reconciler.redact import Redactor
from reconciler.transport.base import TransportError
from reconciler.transport.local import LocalTransport
from reconciler.transport.ssh import SshTransport

# --------------------------------------------------------------------------- local files


def test_local_replace_of_a_missing_file_is_a_transport_error(tmp_path: Path) -> None:
    t = LocalTransport("app1")
    with pytest.raises(TransportError) as info:
        t.replace(str(tmp_path / "gone.new"), str(tmp_path / "haproxy.cfg"))
    assert str(info.value).startswith("host app1: cannot rename ")
    assert "gone.new" in str(info.value) and "haproxy.cfg" in str(info.value)
    assert "No such file" in str(info.value)


def test_local_replace_onto_a_folder_is_a_transport_error(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "x").write_text("")
    (tmp_path / "new").write_text("text")
    with pytest.raises(TransportError, match="host local: cannot rename"):
        LocalTransport().replace(str(tmp_path / "new"), str(tmp_path / "cfg"))
    assert (tmp_path / "new").read_text() == "text"


def test_local_copy_and_unlink_failures_are_transport_errors(tmp_path: Path) -> None:
    t = LocalTransport("lb1")
    with pytest.raises(TransportError, match=r"host lb1: cannot copy .*missing"):
        t.copy(str(tmp_path / "missing"), str(tmp_path / "to"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(TransportError, match=r"host lb1: cannot remove .*folder"):
        t.unlink(str(tmp_path / "folder"))
    t.unlink(str(tmp_path / "never-was"))  # absent: no error, as documented


def test_local_write_text_still_replaces_atomically(tmp_path: Path) -> None:
    t = LocalTransport()
    target = tmp_path / "sub" / "file"
    t.write_text(str(target), "one")
    t.write_text(str(target), "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file"]


# --------------------------------------------------------------------------- SSH (no server)


def _ssh() -> SshTransport:
    host = Host("app2", "192.0.2.1", ("app",), SshConnection(user="deploy"))
    return SshTransport(host, timeout=0.5)


@pytest.mark.parametrize("error", [EOFError(), paramiko.SSHException("channel closed"),
                                   OSError(5, "Input/output error")])
def test_ssh_file_operations_raise_transport_errors(
        monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    t = _ssh()
    monkeypatch.setattr(t, "_sftp_client", object)

    def broken(_sftp: Any) -> None:
        raise error

    with pytest.raises(TransportError) as info:
        t._files("rename", "/srv/haproxy.cfg", broken)
    assert str(info.value).startswith(
        "host app2 (deploy@192.0.2.1:22): cannot rename /srv/haproxy.cfg")


def test_ssh_sftp_that_cannot_start_is_a_transport_error(monkeypatch: pytest.MonkeyPatch) -> None:
    t = _ssh()
    monkeypatch.setattr(t, "connect", object)

    def refuse(_transport: Any) -> None:
        raise paramiko.SSHException("subsystem request failed")

    monkeypatch.setattr(paramiko.SFTPClient, "from_transport", staticmethod(refuse))
    with pytest.raises(TransportError, match=r"host app2 .*cannot start SFTP: subsystem"):
        t.read_text("/etc/hostname")


# --------------------------------------------------------------------------- Docker


class _Containers:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get(self, _name: str) -> Any:
        raise self.error


class _Api:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_host_config(self, **_kw: Any) -> dict[str, Any]:
        return {}

    def create_container(self, *_a: Any, **_kw: Any) -> Any:
        raise self.error

    def stop(self, *_a: Any, **_kw: Any) -> Any:
        raise self.error

    def remove_container(self, *_a: Any, **_kw: Any) -> Any:
        raise self.error


class _Client:
    def __init__(self, error: Exception) -> None:
        self.containers = _Containers(error)
        self.api = _Api(error)


ENGINE_ERRORS = [
    docker.errors.NotFound("No such container: web-1"),
    docker.errors.APIError("500 Server Error", explanation="engine is shutting down"),
    requests.exceptions.ConnectionError("Connection aborted: socket closed"),
]


@pytest.mark.parametrize("error", ENGINE_ERRORS)
def test_wait_healthy_raises_container_errors_for_engine_failures(error: Exception) -> None:
    client: Any = _Client(error)
    with pytest.raises(ContainerError) as info:
        wait_healthy(client, "web-1", HealthCheck(kind="none"), "127.0.0.1", 1, 1.0)
    assert str(info.value).startswith(
        "container web-1: cannot read its state from the Docker engine: ")


@pytest.mark.parametrize("error", ENGINE_ERRORS[1:])
def test_stop_and_remove_raises_container_errors_for_engine_failures(error: Exception) -> None:
    client: Any = _Client(error)
    with pytest.raises(ContainerError, match=r"^container web-1: "):
        stop_and_remove(client, "web-1", grace_s=1)


def test_stop_and_remove_of_a_container_that_is_gone_is_false() -> None:
    client: Any = _Client(docker.errors.NotFound("No such container"))
    assert stop_and_remove(client, "web-1", grace_s=1) is False


def test_create_with_the_engine_gone_is_a_container_error() -> None:
    client: Any = _Client(requests.exceptions.ConnectionError("Connection refused"))
    with pytest.raises(ContainerError) as info:
        create_and_start(client, name="web-1", labels={}, spec=spec(), image_id="sha256:ab",
                         address="127.0.0.1", host="app1", secret_rules=SecretRules("/run/secrets", ""),
                         redactor=Redactor(), pick_port=lambda _a: 40000)
    assert str(info.value) == "container web-1: cannot create it on host app1: Connection refused"
    assert isinstance(info.value, ReconcilerError)
