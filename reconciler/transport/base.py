"""What the executor and the observers need from a host, wherever it is.

Every failure to reach the host or to do what was asked there is raised as
``TransportError`` (or a subclass) with a message that says what failed (over SSH also
the host and its address): no ``OSError`` or paramiko exception leaves a transport's
methods. (The Docker client that ``docker`` hands out raises the SDK's own exceptions;
its users wrap them, e.g. ``reconciler.apply.containers``.)

A ``Transport`` runs commands given as argument lists (never a shell string built from
manifest values), opens byte streams to Unix sockets and TCP ports *as seen from that
host*, reads and writes files there, and hands out a Docker client for its engine.
``LocalTransport`` does this on this machine; ``SshTransport`` over one SSH connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import docker


class TransportError(ReconcilerError):
    """A host cannot be reached, refused us (e.g. its host key), or a file operation failed."""


class HostKeyRefused(TransportError):
    """The host's key is unknown (strict checking) or differs from the known one. Its
    message names the host, its address, the known_hosts file and the fingerprints."""


class StreamUnavailable(TransportError):
    """Nothing listens at the Unix socket or TCP port (the peer refused or it is absent)."""


class Stream(Protocol):
    """The part of a socket that the HAProxy CLI client and the HTTP probe use; a
    ``socket.socket`` and a ``paramiko.Channel`` both fit."""

    def settimeout(self, timeout: float | None) -> None: ...
    def sendall(self, data: bytes) -> None: ...
    def recv(self, size: int) -> bytes: ...
    def shutdown(self, how: int) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Completed:
    """Outcome of a command on a host."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Transport(Protocol):
    name: str  # host name, for messages

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> Completed:
        """Run ``argv`` on the host; raises TransportError only when it cannot be run."""
        ...

    def open_unix(self, path: str, timeout: float) -> Stream:
        """A stream to a Unix socket on the host; StreamUnavailable when nobody listens."""
        ...

    def open_tcp(self, address: str, port: int, timeout: float) -> Stream:
        """A TCP stream opened from the host; StreamUnavailable when refused."""
        ...

    def read_text(self, path: str) -> str | None:
        """A file's text; None when it does not exist."""
        ...

    def read_confined(self, root: str, relative: str) -> str | None:
        """The text of ``root/relative`` reached without following a symbolic link below
        ``root`` (one there raises TransportError, quoting nothing from any file); None
        when it does not exist. For secrets: a link cannot lead out of their folder."""
        ...

    def write_temp(self, beside: str, text: str, mode: int = 0o600) -> str:
        """Write ``text`` to a new file with a random name in the folder of ``beside``
        (created if missing), created exclusively and with ``mode`` from the start;
        returns its path. Check it, then ``replace`` it over the target."""
        ...

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        """Atomically replace ``path`` with ``text`` (``write_temp`` + ``replace``)."""
        ...

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` atomically (same directory)."""
        ...

    def copy(self, src: str, dst: str) -> None:
        """Copy the file ``src`` to ``dst`` (keeping its mode)."""
        ...

    def unlink(self, path: str) -> None:
        """Remove a file; no error when it does not exist (TransportError when it
        cannot be removed)."""
        ...

    def docker(self) -> docker.DockerClient:
        """A client for the host's Docker engine (one per transport, reused)."""
        ...

    def close(self) -> None: ...
