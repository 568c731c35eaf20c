"""The local host: subprocess, Unix and TCP sockets, files and the local Docker engine."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from typing import TYPE_CHECKING

from reconciler.transport.base import Completed, Stream, StreamUnavailable, TransportError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import docker


class LocalTransport:
    """This machine. ``docker`` uses DOCKER_HOST or the default socket."""

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self._docker: docker.DockerClient | None = None

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> Completed:
        try:
            proc = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransportError(f"host {self.name}: cannot run {argv[0]}: {exc}") from None
        return Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def open_unix(self, path: str, timeout: float) -> Stream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise StreamUnavailable(f"{path}: {exc.strerror or exc}") from None
        except OSError as exc:
            sock.close()
            raise TransportError(f"{path}: {exc.strerror or exc}") from None
        return sock

    def open_tcp(self, address: str, port: int, timeout: float) -> Stream:
        try:
            return socket.create_connection((address, port), timeout=timeout)
        except ConnectionRefusedError as exc:
            raise StreamUnavailable(f"{address}:{port}: {exc.strerror or exc}") from None
        except OSError as exc:
            raise TransportError(f"{address}:{port}: {exc.strerror or exc}") from None

    def read_text(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise TransportError(f"{path}: {exc}") from None

    def write_text(self, path: str, text: str, mode: int = 0o640) -> None:
        try:
            os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise TransportError(f"cannot write {path}: {exc.strerror or exc}") from None

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def copy(self, src: str, dst: str) -> None:
        shutil.copy2(src, dst)

    def unlink(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def docker(self) -> docker.DockerClient:
        if self._docker is None:
            from reconciler.observe.docker import local_client

            self._docker = local_client()
        return self._docker

    def close(self) -> None:
        if self._docker is not None:
            self._docker.close()
            self._docker = None
