"""The local host: subprocess, Unix and TCP sockets, files and the local Docker engine."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import stat
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

    def read_confined(self, root: str, relative: str) -> str | None:
        """Read ``root/relative`` descending one component at a time from ``root``
        with O_NOFOLLOW: a symbolic link anywhere below ``root`` is refused, whatever it
        points at (``root`` itself is the operator's and may be a link)."""
        parts = relative.split("/")
        nofollow = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        fds: list[int] = []
        try:
            fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            for part in parts[:-1]:
                fds.append(os.open(part, nofollow | os.O_DIRECTORY, dir_fd=fds[-1]))
            # O_NONBLOCK: a FIFO planted as the secret must not hang the pass.
            fd = os.open(parts[-1], nofollow | os.O_NONBLOCK, dir_fd=fds[-1])
            fds.append(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TransportError(f"{root}/{relative}: not a regular file; refused")
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read().decode("utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise TransportError(f"{root}/{relative}: not UTF-8 text") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise TransportError(
                    f"{root}/{relative}: a symbolic link (or a non-folder) is in the way "
                    f"below {root}; secrets are never read through links"
                ) from None
            raise TransportError(f"{root}/{relative}: {exc.strerror or exc}") from None
        finally:
            for fd in fds:
                os.close(fd)

    def write_temp(self, beside: str, text: str, mode: int = 0o600) -> str:
        """A new file with a random name in ``beside``'s folder, created exclusively
        (O_CREAT|O_EXCL|O_NOFOLLOW) with ``mode`` from the start (umask aside: the mode
        is set on the open descriptor before anything is written); its path."""
        folder = os.path.dirname(beside)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            for _ in range(10):
                path = os.path.join(
                    folder, f".{os.path.basename(beside)}.{secrets.token_hex(8)}.new"
                )
                try:
                    fd = os.open(
                        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode
                    )
                except FileExistsError:
                    continue
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    os.fchmod(f.fileno(), mode)  # the umask may have taken bits away
                    f.write(text)
                return path
        except OSError as exc:
            raise TransportError(f"cannot write beside {beside}: {exc.strerror or exc}") from None
        raise TransportError(f"cannot write beside {beside}: no free temporary name")

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        """Atomically replace ``path`` with ``text`` (a ``write_temp`` renamed over it)."""
        tmp = self.write_temp(path, text, mode)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            self.unlink(tmp)
            raise TransportError(f"cannot write {path}: {exc.strerror or exc}") from None

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` atomically; TransportError when it cannot be."""
        try:
            os.replace(src, dst)
        except OSError as exc:
            raise TransportError(
                f"host {self.name}: cannot rename {src} over {dst}: {exc.strerror or exc}"
            ) from None

    def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` with its mode and times; TransportError when it fails."""
        try:
            shutil.copy2(src, dst)
        except OSError as exc:
            raise TransportError(
                f"host {self.name}: cannot copy {src} to {dst}: {exc.strerror or exc}"
            ) from None

    def unlink(self, path: str) -> None:
        """Remove a file; no error when it does not exist, TransportError when it cannot
        be removed."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TransportError(
                f"host {self.name}: cannot remove {path}: {exc.strerror or exc}"
            ) from None

    def docker(self) -> docker.DockerClient:
        if self._docker is None:
            from reconciler.transport.dockerapi import local_client

            self._docker = local_client()
        return self._docker

    def close(self) -> None:
        if self._docker is not None:
            self._docker.close()
            self._docker = None
