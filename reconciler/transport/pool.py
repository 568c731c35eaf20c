"""The connections of one pass: one transport per host, opened on first use, closed
together at the end of the pass (an SSH connection is reused by every operation on
its host within the pass)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from reconciler.model import Host
from reconciler.transport.base import Transport
from reconciler.transport.local import LocalTransport


class Connections:
    def __init__(self, hosts: Iterable[Host] = ()) -> None:
        self.hosts = {h.name: h for h in hosts}
        self._open: dict[str, Transport] = {}
        self._lock = threading.Lock()

    def add(self, host: Host) -> None:
        self.hosts.setdefault(host.name, host)

    def get(self, name: str) -> Transport:
        """The transport of host ``name`` (KeyError for a host this pass does not know)."""
        with self._lock:
            found = self._open.get(name)
            if found is None:
                host = self.hosts[name]
                if host.ssh is None:
                    found = LocalTransport(name)
                else:
                    from reconciler.transport.ssh import SshTransport

                    found = SshTransport(host)
                self._open[name] = found
            return found

    def close_local(self) -> None:
        """Close the transports of hosts reached without SSH; SSH connections stay."""
        with self._lock:
            local = {n: t for n, t in self._open.items() if self.hosts[n].ssh is None}
            for name in local:
                del self._open[name]
        for t in local.values():
            t.close()

    def close(self) -> None:
        with self._lock:
            opened, self._open = self._open, {}
        for t in opened.values():
            t.close()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
