"""Serving the status page with waitress (a threaded WSGI server): in a daemon thread
beside ``reconcile watch``, or in the foreground for ``reconcile ui``."""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.present.web.app import make_app
from reconciler.present.web.data import PageData

THREADS = 4  # a handful of open pages, each polling every few seconds


class AddressError(ReconcilerError):
    """An address option that is not host:port."""


def parse_addr(text: str) -> tuple[str, int]:
    """'127.0.0.1:9180' -> ('127.0.0.1', 9180); '[::1]:9180' and 'localhost:9180' too.
    Raises AddressError naming the value otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AddressError(f"address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9180")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PageServer:
    """The page of ``data`` bound to ``addr`` (bound at construction: a port in use
    raises AddressError at once, not later in a thread)."""

    def __init__(self, data: PageData, addr: str) -> None:
        from waitress.server import create_server

        host, port = parse_addr(addr)
        app = make_app(data, loopback_only=is_loopback(host))
        # waitress logs every queue backlog as a warning; the page's polls are not news
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        try:
            self._server: Any = create_server(app, host=host, port=port, threads=THREADS)
        except OSError as exc:
            raise AddressError(f"cannot serve the status page on {addr}: {exc}") from None
        self.port = int(self._server.effective_port)
        self.host = host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> PageServer:
        """Serve in a daemon thread (it ends with the process)."""
        threading.Thread(target=self.run, daemon=True, name="status-page").start()
        return self

    def run(self) -> None:
        """Serve until ``close`` (or the process ends)."""
        self._server.run()

    def close(self) -> None:
        self._server.close()
