"""A kept connection to HAProxy's stats socket that streams a ring's new lines.

``show events <ring> -w`` prints what the ring holds and then every line as it is
written, for as long as the connection stays open; with ``-n`` it skips what the ring
already holds. The connection belongs to the worker that accepted it: after a reload
the old worker keeps it (and stays alive for it, so it must be closed) and writes the
soft-stop notices of its proxies (``Proxy <name> stopped ...``) into the ring as it
stops; the new worker has a ring of its own.
"""

from __future__ import annotations

import contextlib

from reconciler.errors import ObserveError
from reconciler.lb.haproxy.runtime import SocketUnavailable
from reconciler.transport.base import Stream, StreamUnavailable, Transport, TransportError

RECV_SIZE = 1 << 20
MAX_READ = 8 << 20  # one read's bytes at most (a ring holds 8 MiB)
_RING_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def stopped_notice(text: str) -> bool:
    """True when ``text`` (lines of a ring) holds a proxy's soft-stop notice: the
    worker that serves this connection is being replaced."""
    return text.startswith("Proxy ") or "\nProxy " in text


class EventStream:
    """One streaming connection (see the module doc). Not thread-safe: one reader."""

    def __init__(self, stream: Stream, where: str) -> None:
        self._stream = stream
        self._where = where
        self._partial = b""
        self.closed = False

    @classmethod
    def open(
        cls, transport: Transport, path: str, ring: str, new_only: bool, timeout: float = 5.0
    ) -> EventStream:
        """Connect to the stats socket at ``path`` on ``transport``'s host and start
        streaming ``ring`` (``new_only``: skip what it holds already). Raises
        ``SocketUnavailable`` when nothing listens, ``ObserveError`` on other failures;
        ``ValueError`` for a ring name that is not a plain word."""
        if not ring or not set(ring) <= _RING_NAME_CHARS:
            raise ValueError(f"refusing ring name {ring!r}")
        where = f"HAProxy socket {path}" + (
            f" on {transport.name}" if transport.name != "local" else ""
        )
        try:
            sock = transport.open_unix(path, timeout)
        except StreamUnavailable as e:
            raise SocketUnavailable(f"{where}: {e}") from None
        except TransportError as e:
            raise ObserveError(f"{where}: {e}") from None
        try:
            sock.sendall(f"show events {ring} -w{'n' if new_only else ''}\n".encode())
        except OSError as e:
            sock.close()
            raise ObserveError(f"{where}: {e.strerror or e}") from None
        return cls(sock, where)

    def read(self, timeout: float) -> str | None:
        """The complete lines that arrived within ``timeout`` seconds ("" when none),
        with everything else already buffered (up to ``MAX_READ`` bytes: one batch for
        the reader); None once HAProxy closed the connection. Raises ObserveError when
        it fails."""
        if self.closed:
            return None
        try:
            self._stream.settimeout(timeout)
            chunk = self._stream.recv(RECV_SIZE)
        except TimeoutError:
            return ""
        except OSError as e:
            self.close()
            raise ObserveError(f"{self._where}: {e.strerror or e}") from None
        if not chunk:
            self.close()
            return None
        chunks = [self._partial, chunk]
        eof = self._drain(chunks, len(chunk))
        data = b"".join(chunks)
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if eof:
            self.close()
        return data[:cut].decode("utf-8", errors="replace")

    def _drain(self, chunks: list[bytes], size: int) -> bool:
        """Append what is buffered without waiting; True when the peer closed."""
        try:
            self._stream.settimeout(0.0)
            while size < MAX_READ:
                chunk = self._stream.recv(RECV_SIZE)
                if not chunk:
                    return True
                chunks.append(chunk)
                size += len(chunk)
        except (TimeoutError, BlockingIOError):  # nothing more buffered (socket, channel)
            pass
        except OSError as e:
            self.close()
            raise ObserveError(f"{self._where}: {e.strerror or e}") from None
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self._stream.close()
