"""In-memory fakes of what the executor acts on, for fast unit tests of its rules.

- ``FakeEngines``: the app hosts' container engines (``reconciler.apply.engines.Engines``).
- ``FakeLB``: the load balancer of one LB host (``reconciler.lb.port.LoadBalancerPort``),
  keeping the port's contract: a rejected config installs nothing, a failed reload
  restores the last good config, a drained server takes no traffic.
- ``FakeHAProxyHost``: a ``Transport`` with in-memory files, ``haproxy -c`` and the
  master CLI and stats socket of an HAProxy 2.6, for ``HAProxy`` itself (control.py).

Each has knobs for the faults a test inflicts and state a test asserts on (what runs,
what is installed, what serves). Fakes drift from the real thing: the integration tests
check the same rules against Docker and HAProxy.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.apply.containers import ContainerError, Started
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.lb.port import LBError, NoSuchServer, ServerEntry
from reconciler.model import (
    ContainerSpec,
    DesiredState,
    HealthCheck,
    LoadBalancer,
    ObservedLB,
    ObservedState,
    ServerState,
    Service,
)
from reconciler.transport.base import Completed, StreamUnavailable

# --------------------------------------------------------------------------- containers


@dataclass
class FakeContainer:
    host: str
    name: str
    address: str
    port: int
    labels: dict[str, str] = field(default_factory=dict)


class FakeEngines:
    """Container engines of every app host, in memory. Knobs: ``fail_start`` (host,
    name) -> why the start fails (None: it starts); ``unhealthy`` (host, name) -> True
    when the container never passes its health check; ``before_start`` runs first."""

    def __init__(self, containers: Iterable[FakeContainer] = ()) -> None:
        self.containers = {(c.host, c.name): c for c in containers}
        self.fail_start: Callable[[str, str], str | None] = lambda host, name: None
        self.unhealthy: Callable[[str, str], bool] = lambda host, name: False
        self.before_start: Callable[[str, str], None] = lambda host, name: None
        self.started: list[tuple[str, str]] = []  # every start, in order
        self.removed: list[tuple[str, str]] = []  # every removal, in order
        self._lock = threading.Lock()

    @classmethod
    def from_observed(cls, observed: ObservedState) -> FakeEngines:
        return cls(
            FakeContainer(h.name, c.name, c.published[0], c.published[1], dict(c.labels))
            for h in observed.hosts
            for c in h.containers
            if c.published
        )

    def names(self, service: str | None = None) -> set[tuple[str, str]]:
        """(host, name) of the containers there are (of ``service``'s only)."""
        return {k for k in self.containers if service is None or f"-{service}-" in k[1]}

    def port_picker(self, host: str, used: Collection[int]) -> Callable[[str], int]:
        taken = set(used)
        lock = threading.Lock()

        def pick(_address: str) -> int:
            with lock:
                port = next(p for p in range(30000, 40000) if p not in taken)
                taken.add(port)
                return port

        return pick

    def start(
        self,
        host: str,
        *,
        name: str,
        labels: dict[str, str],
        spec: ContainerSpec,
        image_id: str,
        address: str,
        pick_port: Callable[[str], int],
    ) -> Started:
        self.before_start(host, name)
        why = self.fail_start(host, name)
        if why is not None:
            raise ContainerError(f"container {name}: {why}")
        with self._lock:
            if (host, name) in self.containers:
                raise ContainerError(f"container name {name} is taken on host {host}")
            port = pick_port(address)
            self.containers[(host, name)] = FakeContainer(host, name, address, port, labels)
            self.started.append((host, name))
        return Started(name=name, id=f"id-{host}-{name}", address=address, port=port)

    def wait_healthy(
        self,
        host: str,
        name: str,
        health: HealthCheck,
        address: str,
        port: int,
        deadline_s: float,
        secret_names: Collection[str],
    ) -> None:
        c = self.containers.get((host, name))
        if c is None or (c.address, c.port) != (address, port):
            raise ContainerError(f"container {name} is not healthy: container gone")
        if self.unhealthy(host, name):
            raise ContainerError(
                f"container {name} is not healthy: GET {health.path}: HTTP 503 "
                f"(no success within {deadline_s:.0f}s)\nlast log lines:\n  (no output)"
            )

    def remove(self, host: str, name: str, grace_s: int) -> bool:
        with self._lock:
            gone = self.containers.pop((host, name), None)
            self.removed.append((host, name))
        return gone is not None



# --------------------------------------------------------------------------- load balancer


@dataclass
class FakeServer:
    address: str
    port: int
    weight: int
    state: str = "ready"  # ready, drain


_SERVER_LINE = re.compile(r"server (\S+)/(\S+) (\S+):(\d+) weight (\d+)")


def fake_config(lb_name: str, servers: Iterable[ServerEntry]) -> str:
    """The fake's config language: one line per server, sorted (same input, same text)."""
    lines = [f"# load balancer {lb_name}"]
    lines += sorted(
        f"server {s.backend}/{s.name} {s.address}:{s.port} weight {s.weight}" for s in servers
    )
    return "\n".join(lines) + "\n"


class FakeLB:
    """The load balancer of one LB host. Knobs: ``reject`` (``check`` refuses every
    config with this text), ``reload_fails``, ``never_up`` (server names never UP),
    ``sessions_stay`` (server names whose sessions never end), ``delete_refused``,
    ``binds_taken`` (what ``bind_problems`` answers), ``old_sessions``."""

    def __init__(
        self,
        host: str,
        servers: Mapping[tuple[str, str], FakeServer] | None = None,
        config: str | None = None,
    ) -> None:
        self.host = host
        self.servers: dict[tuple[str, str], FakeServer] = dict(servers or {})
        self.config = config  # the installed config
        self.last_good: str | None = None
        self.is_running = config is not None
        self.checked: dict[Path, str] = {}  # checked copies not installed (nor discarded)
        self.check_count = 0
        self.reloads = 0  # confirmed
        self.runtime_adds = 0
        self.starts = 0
        self.reject: str | None = None
        self.reload_fails = False
        self.never_up: set[str] = set()
        self.sessions_stay: set[str] = set()
        self.delete_refused: set[str] = set()
        self.binds_taken: list[str] = []
        self.old_sessions: dict[str, int] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_observed(cls, lb: ObservedLB, lbdef: LoadBalancer) -> FakeLB:
        entries = [
            ServerEntry(s.backend, s.server, s.address, s.port, s.weight) for s in lb.servers
        ]
        servers = {
            (s.backend, s.server): FakeServer(
                s.address, s.port, s.weight, "drain" if "drain" in s.admin else "ready"
            )
            for s in lb.servers
        }
        return cls(lb.host, servers, fake_config(lbdef.name, entries) if lb.running else None)

    def serving(self) -> set[tuple[str, str, str, int]]:
        """(backend, server, address, port) of the servers that get new requests."""
        if not self.is_running:
            return set()
        return {
            (b, n, s.address, s.port)
            for (b, n), s in self.servers.items()
            if s.weight > 0 and s.state == "ready"
        }

    def _server(self, backend: str, server: str, cmd: str) -> FakeServer:
        found = self.servers.get((backend, server))
        if found is None:
            raise NoSuchServer(f"HAProxy refused {cmd!r}: No such server.")
        return found

    def _load(self) -> None:
        """A new process on the installed config; admin states kept (server-state file)."""
        old, self.servers = self.servers, {}
        for b, n, address, port, weight in _SERVER_LINE.findall(self.config or ""):
            state = old[(b, n)].state if (b, n) in old else "ready"
            self.servers[(b, n)] = FakeServer(address, int(port), int(weight), state)

    # ---------------------------------------------------------------- the port

    def observe(self) -> ObservedLB:
        with self._lock:
            servers = tuple(
                ServerState(
                    b, n, s.address, s.port, s.weight, "running", (s.state,) * (s.state != "ready")
                )
                for (b, n), s in sorted(self.servers.items())
            )
        return ObservedLB(
            self.host, self.is_running, servers=servers if self.is_running else ()
        )

    def request_events(self) -> str:
        return ""

    def prepare(self) -> None:
        pass

    def config_text(
        self, desired: DesiredState, lb: LoadBalancer, servers: Iterable[ServerEntry]
    ) -> str:
        return fake_config(lb.name, servers)

    def bind_problems(self, binds: Iterable[tuple[str, str, int]]) -> list[str]:
        return list(self.binds_taken)

    def check(self, text: str) -> Path:
        if self.reject is not None:
            raise LBError(
                f"LB host {self.host}: haproxy -c rejected the new config; nothing installed:\n"
                + self.reject
            )
        with self._lock:
            self.check_count += 1  # a unique name each time, as HAProxy.check's temp files
            path = Path(f"/fake/{self.host}/checked-{self.check_count}-{hash(text)}")
            self.checked[path] = text
        return path

    def discard(self, checked: Path) -> None:
        self.checked.pop(checked, None)

    def install(self, text: str, checked: Path | None = None) -> bool:
        if self.config == text:
            if checked is not None:
                self.discard(checked)
            return False
        checked = checked or self.check(text)
        installed = self.checked.pop(checked)  # renamed over the config: what was checked
        if self.config is not None:
            self.last_good = self.config
        self.config = installed
        return True

    def running(self) -> bool:
        return self.is_running

    def start(self) -> None:
        self.is_running = True
        self.starts += 1
        self._load()

    def reload(self) -> None:
        if self.reload_fails:
            if self.last_good is not None:
                self.config = self.last_good
                self._load()
                raise LBError(
                    f"LB host {self.host}: HAProxy reload failed (failed reloads 1, workers "
                    "[2] -> [2]); the last good config was restored"
                )
            raise LBError(f"LB host {self.host}: HAProxy reload failed (failed reloads 1)")
        self.reloads += 1
        self._load()

    def add_server(self, service: Service | None, entry: ServerEntry) -> None:
        with self._lock:
            if not self.is_running or (entry.backend, entry.name) in self.servers:
                raise LBError(f"HAProxy refused add server {entry.backend}/{entry.name}")
            self.servers[(entry.backend, entry.name)] = FakeServer(entry.address, entry.port, 0)
            self.runtime_adds += 1

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        with self._lock:
            srv = self._server(backend, server, f"set weight {backend}/{server} {weight}")
            srv.weight, srv.state = weight, "ready"

    def set_address(self, backend: str, server: str, address: str, port: int) -> None:
        with self._lock:
            srv = self._server(backend, server, f"set server {backend}/{server} addr")
            srv.address, srv.port = address, port

    def replace_certificate(self, path: str) -> str:
        raise AssertionError("the fake LB does not serve certificates: tests/integration/test_tls_renewal.py uses a real HAProxy")

    def acme(self) -> Any:
        raise AssertionError("the fake LB has no ACME: tests/integration/test_acme.py uses a real HAProxy and pebble")

    def drain(self, backend: str, server: str) -> None:
        with self._lock:
            srv = self._server(backend, server, f"set weight {backend}/{server} 0")
            srv.weight, srv.state = 0, "drain"

    def wait_drained(self, backend: str, server: str, timeout: float) -> bool:
        return (backend, server) not in self.servers or server not in self.sessions_stay

    def delete_server(self, backend: str, server: str, timeout: float) -> None:
        with self._lock:
            if server in self.delete_refused:
                raise LBError(
                    f"HAProxy refused to delete {backend}/{server}: Server still has connections"
                )
            self.servers.pop((backend, server), None)

    def wait_up(self, servers: Iterable[tuple[str, str]], timeout: float) -> list[str]:
        return sorted(
            f"{b}/{s}"
            for b, s in servers
            if not self.is_running or (b, s) not in self.servers or s in self.never_up
        )

    def old_worker_sessions(self, servers: Iterable[tuple[str, str]]) -> int:
        return sum(self.old_sessions.get(s, 0) for _, s in servers)


# --------------------------------------------------------------------------- HAProxy's host

_SHOW_PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
{master}          master          {reloads} [failed: {failed}]   0d00h01m01s     2.6.12
# workers
{worker}           worker          0               0d00h00m11s     2.6.12
# programs
"""


class _Answer:
    """A socket connection that answers one command line."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.out = b""

    def settimeout(self, timeout: float | None) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.out = self.answer(data.decode().strip()).encode()

    def recv(self, size: int) -> bytes:
        chunk, self.out = self.out[:size], self.out[size:]
        return chunk

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


class FakeHAProxyHost:
    """An LB host with an HAProxy 2.6 in master-worker mode, in memory: files, the
    ``haproxy -c`` check, the master CLI (``show proc``, ``reload``) and the stats
    socket. A config containing ``bad_word`` passes ``haproxy -c`` but fails to load
    on reload (like a port another process holds); one containing ``invalid`` fails the
    check."""

    def __init__(self, paths: HAProxyPaths, name: str = "lb1") -> None:
        self.name = name
        self.files: dict[str, str] = {}
        self.config_path = str(paths.config)
        self.master_socket, self.stats_socket = str(paths.master_socket), str(paths.stats_socket)
        self.running = False
        self.master_pid, self.worker_pid = 100, 200
        self.reloads = self.failed = 0
        self.loaded: str | None = None  # the config the current worker runs
        self.bad_word = "BIND-TAKEN"
        self._temp = 0

    # HAProxy's side
    def _master(self, cmd: str) -> str:
        if cmd == "show proc":
            return _SHOW_PROC.format(
                master=self.master_pid,
                reloads=self.reloads,
                failed=self.failed,
                worker=self.worker_pid,
            )
        if cmd == "reload":
            text = self.files.get(self.config_path, "")
            self.reloads += 1
            if self.bad_word in text:
                self.failed += 1  # the old worker stays
            else:
                self.failed, self.worker_pid, self.loaded = 0, self.worker_pid + 1, text
            return ""
        return f"Unknown command: {cmd}\n"

    def _stats(self, cmd: str) -> str:
        if cmd.startswith("show info"):
            return f"Name: HAProxy\nPid: {self.worker_pid}\n"
        if cmd.startswith("show servers state"):
            return "1\n# be_id be_name srv_id srv_name\n"
        return ""

    # the Transport
    def run(self, argv: Sequence[str], timeout: float = 60.0) -> Completed:
        if argv[1:3] == ["-c", "-f"]:
            bad = "invalid" in self.files.get(argv[3], "")
            return Completed(
                tuple(argv), 1 if bad else 0, "", "[ALERT] (1) : config invalid" if bad else ""
            )
        return Completed(tuple(argv), 1, "", "not faked")

    def open_unix(self, path: str, timeout: float) -> Any:
        if not self.running:
            raise StreamUnavailable(f"{path}: connection refused")
        return _Answer(self._master if path == self.master_socket else self._stats)

    def open_tcp(self, address: str, port: int, timeout: float) -> socket.socket:
        raise StreamUnavailable("not faked")

    def read_text(self, path: str) -> str | None:
        return self.files.get(path)

    def read_confined(self, root: str, relative: str) -> str | None:
        return self.files.get(f"{root}/{relative}")

    def write_temp(self, beside: str, text: str, mode: int = 0o600) -> str:
        self._temp += 1
        path = f"{beside}.tmp{self._temp}"
        self.files[path] = text
        return path

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        self.files[path] = text

    def replace(self, src: str, dst: str) -> None:
        self.files[dst] = self.files.pop(src)

    def copy(self, src: str, dst: str) -> None:
        self.files[dst] = self.files[src]

    def unlink(self, path: str) -> None:
        self.files.pop(path, None)

    def docker(self) -> Any:
        raise AssertionError("an LB host of the fakes has no Docker engine: nothing may ask it")

    def close(self) -> None:
        pass
