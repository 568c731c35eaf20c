"""What one HAProxy in master-worker mode says about itself, through its two sockets: is it
running, its processes (``show proc``), its servers' stats and counters, and waits on
those. Reads only: every change (config, process, servers) goes through
``control.HAProxy``, which builds on this.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from reconciler import polling
from reconciler.errors import ObserveError
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.lb.haproxy.proc import MasterProcs, parse_show_proc
from reconciler.lb.haproxy.runtime import RuntimeSocket, SocketUnavailable
from reconciler.lb.haproxy.stats import parse_stat_csv
from reconciler.model import ServerStats
from reconciler.transport.base import Transport, TransportError


class HAProxyProcess:
    """One HAProxy's sockets and pid file under ``paths``, on the host of ``transport``.

    Reads raise ``ObserveError`` (``SocketUnavailable`` when nothing listens) unless said
    otherwise."""

    def __init__(self, paths: HAProxyPaths, transport: Transport) -> None:
        self.paths = paths
        self.transport = transport
        self.stats = RuntimeSocket(str(paths.stats_socket), transport=transport)
        self.master = RuntimeSocket(str(paths.master_socket), transport=transport)
        self.host = transport.name

    def running(self) -> bool:
        """True when the master CLI answers (a reset while it starts up is retried)."""
        for attempt in range(5):
            try:
                self.master.command("show proc")
            except SocketUnavailable:
                return False
            except ObserveError:
                if attempt == 4:
                    raise
                time.sleep(0.1)
                continue
            return True
        return False

    def _recorded_pid(self) -> int | None:
        """The master's pid from the pid file; None when there is none."""
        try:
            return int((self.transport.read_text(str(self.paths.pid_file)) or "").split()[0])
        except (TransportError, ValueError, IndexError):
            return None

    def _alive(self, pid: int) -> bool:
        return self.transport.run(["kill", "-0", str(pid)]).returncode == 0

    def procs(self) -> MasterProcs:
        """The master's view of its processes. The master re-executes itself on every
        reload, so a refused or reset connection is retried for a moment."""
        deadline = time.monotonic() + 3.0
        while True:
            try:
                return parse_show_proc(self.master.command("show proc"))
            except ObserveError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def save_server_state(self) -> None:
        """Dump runtime server states so the next worker keeps weights and drain states."""
        text = self.stats.command("show servers state")
        self.transport.write_text(str(self.paths.server_state), text)

    def old_worker_sessions(self, servers: Iterable[tuple[str, str]]) -> int:
        """Current sessions on ``servers`` in HAProxy processes of earlier configs (the
        drain only saw the current process); addressed through the master CLI."""
        wanted = set(servers)
        total = 0
        for pid in self.procs().old_pids:
            try:
                text = self.master.command(f"@!{pid} show stat")
                stats = parse_stat_csv(text)
            except (ObserveError, ValueError):
                continue  # the process exited meanwhile
            total += sum(s.current_sessions for s in stats if (s.backend, s.server) in wanted)
        return total

    def server_stats(self) -> tuple[ServerStats, ...]:
        return parse_stat_csv(self.stats.command("show stat"))

    def wait_up(self, servers: Iterable[tuple[str, str]], timeout: float) -> list[str]:
        """Wait until every (backend, server) is UP after a completed health check; the
        ones that are not by the deadline. A server HAProxy has just loaded shows UP
        before its first check (check status INI): that does not count, or a server
        whose checks fail would be taken for UP until its first check marks it DOWN."""
        pending = set(servers)
        deadline = time.monotonic() + timeout
        sleeps = polling.intervals()
        while pending:
            stats = {(s.backend, s.server): s for s in self.server_stats()}
            pending = {k for k in pending if not _is_up(stats.get(k))}
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(next(sleeps))
        return sorted(f"{b}/{s}" for b, s in pending)

    def wait_drained(self, backend: str, server: str, timeout: float) -> bool:
        """True when the server's current sessions reached 0 before ``timeout``."""
        deadline = time.monotonic() + timeout
        sleeps = polling.intervals()
        while True:
            stats = {(s.backend, s.server): s for s in self.server_stats()}
            s = stats.get((backend, server))
            if s is None or s.current_sessions == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(next(sleeps))

    def _answers(self, sock: RuntimeSocket) -> bool:
        try:
            sock.command("show info")
        except SocketUnavailable:
            return False
        return True


def _is_up(s: ServerStats | None) -> bool:
    # HAProxy starts a server UP, before its first check (status INI), which may come up
    # to `inter` later: only UP after a completed check (or without checks) is UP. The
    # reconciler's own gate is no substitute: HAProxy checks again, on its own.
    return s is not None and s.status.startswith("UP") and s.check_status != "INI"
