"""The Docker SDK, imported lean, and a client for the local engine."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from reconciler.errors import ObserveError

if TYPE_CHECKING:
    import docker


def import_docker_sdk() -> None:
    """Import the Docker SDK without its optional SSH transport, which imports paramiko
    (a fifth of a second of start-up on every command) for Docker-over-SSH, which the
    reconciler does not use: a ``None`` in sys.modules makes that optional import fail
    fast, and is taken out again so that paramiko itself stays importable."""
    if "docker" in sys.modules or "paramiko" in sys.modules:
        return
    sys.modules["paramiko"] = None  # type: ignore[assignment]
    try:
        import docker  # noqa: F401
    finally:
        del sys.modules["paramiko"]


def local_client(timeout: float = 10.0) -> docker.DockerClient:
    """A client for the local engine (DOCKER_HOST or the default socket)."""
    import_docker_sdk()
    import docker

    try:
        return docker.from_env(timeout=int(timeout))
    except docker.errors.DockerException as exc:
        raise ObserveError(f"cannot reach the local Docker engine: {exc}") from exc
