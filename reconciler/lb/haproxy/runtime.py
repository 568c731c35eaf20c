"""The HAProxy CLI client: one command (or one chain of commands) per connection, to a
stats socket (``level admin``, the runtime API) or to the master CLI.

The parsers of its answers are in ``stats`` (stats socket) and ``proc`` (master CLI);
``reconciler.lb.haproxy.observe`` reads an ``ObservedLB`` snapshot through it.
"""

from __future__ import annotations

import socket
import time

from reconciler.errors import ObserveError
from reconciler.lb.haproxy.certs import pem_payload
from reconciler.transport.base import StreamUnavailable, Transport, TransportError
from reconciler.transport.local import LocalTransport


class SocketUnavailable(ObserveError):
    """Nothing listens on the socket path (missing file or connection refused)."""


class RuntimeSocket:
    """One HAProxy CLI socket: a stats socket or the master CLI (same protocol).

    Every ``command`` opens a new connection, sends the command and a newline, shuts
    down its writing side (the 2.6 master CLI only answers and closes after that) and
    reads until HAProxy closes. ``timeout`` bounds the whole exchange. The socket is on
    the host of ``transport`` (this machine when None), e.g. an LB host over SSH.
    """

    def __init__(self, path: str, timeout: float = 5.0, transport: Transport | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.transport = transport or LocalTransport()

    def command(self, cmd: str) -> str:
        """The full answer to ``cmd``, decoded as UTF-8 (undecodable bytes replaced).

        ``ValueError`` for an empty command or one containing a newline, carriage
        return, NUL or ``;`` (one command per call, nothing chained). ``SocketUnavailable``
        when nothing listens; ``ObserveError`` naming the path on any other failure or
        when the deadline passes. HAProxy's own error answers are returned as text.
        """
        return self.commands([cmd])

    def commands(self, cmds: list[str]) -> str:
        """Several commands in one connection (HAProxy runs ``a; b`` in order and
        concatenates their answers): one round trip, which counts over SSH. Each
        command is checked like ``command``'s."""
        for cmd in cmds:
            _check_command(cmd)
        return self._exchange("; ".join(cmds) + "\n")

    def set_ssl_cert(self, path: str, pem: str) -> str:
        """``set ssl cert PATH <<`` with ``pem`` as its payload: the one command sent
        with a multi-line payload. ``pem`` must already be ``certs.pem_payload``'s form
        (PEM armour and base64 lines only, no blank line); it is checked again here, so
        nothing else can ride on it. ``ValueError`` (quoting nothing of ``pem``) when
        either is refused; otherwise as ``command``."""
        _check_command(path)
        if " " in path or not path.startswith("/"):
            raise ValueError(f"refusing certificate path {path!r}")
        if pem_payload(pem) != pem:
            raise ValueError("refusing a certificate payload that is not in PEM payload form")
        return self._exchange(f"set ssl cert {path} <<\n{pem}\n\n")

    def _exchange(self, cmd: str) -> str:
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        where = f"HAProxy socket {self.path}"
        if self.transport.name != "local":
            where += f" on {self.transport.name}"
        try:
            sock = self.transport.open_unix(self.path, self.timeout)
        except StreamUnavailable as e:
            raise SocketUnavailable(f"{where}: {e}") from None
        except TransportError as e:
            raise ObserveError(f"{where}: {e}") from None
        try:
            sock.sendall(cmd.encode())
            sock.shutdown(socket.SHUT_WR)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            raise ObserveError(f"{where}: no complete answer within {self.timeout}s") from None
        except OSError as e:
            raise ObserveError(f"{where}: {e.strerror or e}") from None
        finally:
            sock.close()
        return b"".join(chunks).decode("utf-8", errors="replace")


def _check_command(cmd: str) -> None:
    """One command, nothing chained or smuggled: ``ValueError`` when empty or when it
    contains a newline, carriage return, NUL or ``;``."""
    if not cmd.strip() or any(c in cmd for c in "\n\r\0;"):
        raise ValueError(f"refusing runtime API command {cmd!r}")
