"""Helpers of the fault tests: traffic through HAProxy, history polling, a reconciler run
as a process that can be killed at chosen points, the world checks every fault ends
with, and a Docker daemon restart that restores the daemon exactly as it ran."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from deploy_support import Deployment

from reconciler import identity, instance
from reconciler.desired.manifests import load_manifests, resolve
from reconciler.desired.source import RepoSpec, open_repo, read_commit
from reconciler.lb.haproxy.stats import parse_servers_state

# --------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """Requests through HAProxy, one after another on new connections, in a thread:
    every answer is counted (status, first word of the body), failures included."""

    url: str
    minimum: int = 5  # requests made at least, also after the block ends
    results: list[tuple[int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    died: str | None = None  # what ended the thread early, if anything did
    alive_at_end: bool = False  # the thread was still sending when the block ended
    ended_at: float = 0.0

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    with urllib.request.urlopen(self.url, timeout=5) as resp:
                        self.results.append((resp.status, resp.read().decode().split(" ")[0]))
                except urllib.error.HTTPError as exc:
                    self.results.append((exc.code, exc.read().decode()[:80]))
                except Exception as exc:  # every failure counts, none ends the thread
                    # URLError, OSError, but also http.client.IncompleteRead,
                    # BadStatusLine, RemoteDisconnected, a decode error...
                    self.results.append((0, f"{type(exc).__name__}: {exc}"[:120]))
                self._stop.wait(0.02)  # pacing of the load generator, not a wait for state
        except BaseException as exc:  # the thread must not die unseen
            self.died = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.ended_at = time.monotonic()

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 10
        while len(self.results) < self.minimum and time.monotonic() < deadline:
            if self._thread is not None and not self._thread.is_alive():
                break
            time.sleep(0.02)
        # the thread must have lived up to the end of the block
        self.alive_at_end = self._thread is not None and self._thread.is_alive()
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]

    @property
    def revisions(self) -> Counter[str]:
        return Counter(body for status, body in self.results if status == 200)

    def assert_served(self) -> None:
        assert self.died is None, f"the traffic thread died: {self.died}"
        assert self.alive_at_end, "the traffic thread ended before the block did"
        assert len(self.results) >= self.minimum, f"only {len(self.results)} requests were made"
        assert not self.failures, (
            f"{len(self.failures)} of {len(self.results)} requests through HAProxy failed: "
            f"{Counter(self.failures).most_common(5)}"
        )


def answers(dep: Deployment, n: int = 10) -> Counter[str]:
    """``n`` requests through HAProxy, all of which must succeed: revisions seen."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        status, body = dep.get("/")
        assert status == 200, (status, body)
        seen[body.split(" ")[0]] += 1
    return seen


# --------------------------------------------------------------------------- history


class History:
    """Read-only view of ``<state>/history.sqlite`` while a reconciler writes it."""

    def __init__(self, state: Path) -> None:
        self.path = state / "history.sqlite"
        self.db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        if self.db is None and self.path.exists():
            self.db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        return self.db

    def last_run(self) -> int:
        db = self._conn()
        if db is None:
            return 0
        return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0])

    def run(self, run_id: int) -> dict[str, Any]:
        db = self._conn()
        assert db is not None
        cur = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,))
        names = [d[0] for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))

    def steps(self, run_id: int) -> list[dict[str, Any]]:
        db = self._conn()
        if db is None:
            return []
        cur = db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY step", (run_id,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def step_count(self, after_run: int) -> int:
        """Steps recorded by the newest run started after ``after_run`` (0 if none yet)."""
        db = self._conn()
        if db is None:
            return 0
        row = db.execute(
            "SELECT COUNT(*) FROM steps WHERE run_id = (SELECT MAX(id) FROM runs WHERE id > ?)",
            (after_run,),
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


# --------------------------------------------------------------------------- a killable apply


@dataclass
class ApplyProcess:
    """``python -m reconciler apply`` as a child process, output in a file."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, dep: Deployment, *extra: str) -> ApplyProcess:
        log = dep.root / f"apply-{time.monotonic_ns()}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "apply", "--repo", str(dep.repo),
                 "--env", dep.env, "--state-dir", str(dep.state), "--health-timeout", "20",
                 *extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent, env=dict(os.environ),
            )
        return cls(proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_when(self, cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """SIGKILL the process as soon as ``cond()`` holds; fail if it ends first."""
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"apply ended (exit {self.proc.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")
            time.sleep(0.002)
        self.kill()
        assert self.proc.returncode == -signal.SIGKILL, (
            f"apply was not killed at {what} (exit {self.proc.returncode}):\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


# --------------------------------------------------------------------------- the world


def desired_names(dep: Deployment, client: docker.DockerClient) -> dict[str, set[str]]:
    """Service -> container names the HEAD commit of ``dep.repo`` wants (replicas x
    releases each), from the same identity functions the reconciler names them with."""
    repo, subdir = open_repo(RepoSpec(location=str(dep.repo), branch=None, subdir=""),
                             fetch=False)
    snap = read_commit(repo, subdir, "HEAD")
    desired = resolve(load_manifests(snap.files), dep.env, snap.commit)
    name = instance.resolve(dep.state, None, create=False).name
    out: dict[str, set[str]] = {}
    for svc in desired.services:
        names = out.setdefault(svc.name, set())
        for rel in svc.releases:
            image_id = client.images.get(rel.spec.image).id
            chash = identity.config_hash(dep.env, svc.name, rel.revision, rel.spec, image_id)
            for replica in range(svc.replicas):
                names.add(identity.container_name(dep.env, svc.name, rel.revision, chash,
                                                  replica, name))
    return out


def assert_only_desired_containers(dep: Deployment, client: docker.DockerClient) -> None:
    """No duplicate and no orphan: the env's containers are exactly the desired ones,
    one each, all running."""
    want = desired_names(dep, client)
    for service, names in want.items():
        have = [c.name for c in dep.containers(service)]
        assert len(have) == len(set(have)) == len(names), (service, sorted(have), sorted(names))
        assert set(have) == names, (service, sorted(have), sorted(names))
    others = {c.name for c in dep.containers()} - set().union(*want.values())
    assert not others, f"orphan containers: {sorted(others)}"
    for c in dep.containers():
        assert c.status == "running", (c.name, c.status)


def _healthz(address: str, port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def assert_routes_only_to_healthy(dep: Deployment, client: docker.DockerClient) -> None:
    """Every server HAProxy could send a request to (UP or DRAIN in ``show stat``) is a
    running, healthy container of this environment at the address HAProxy uses."""
    states = {(s.backend, s.server): s
              for s in parse_servers_state(dep.haproxy.stats.command("show servers state"))}
    live = [s for s in dep.haproxy.server_stats()
            if s.status.startswith(("UP", "DRAIN", "NOLB"))]
    assert any(s.backend == "be_web" for s in live), "no web server is UP in HAProxy"
    for stat in live:
        state = states[(stat.backend, stat.server)]
        name = stat.server.split(".", 1)[1]
        try:
            c = client.containers.get(name)
        except docker.errors.NotFound:
            raise AssertionError(f"HAProxy {stat.backend}/{stat.server} is {stat.status} "
                                 f"but container {name} does not exist") from None
        assert c.status == "running", (stat.server, stat.status, c.status)
        assert c.labels.get(identity.ENVIRONMENT) == dep.env, c.labels
        health = (c.attrs["State"].get("Health") or {}).get("Status", "none")
        assert health in ("healthy", "none"), (c.name, health)
        published = {(b["HostIp"], int(b["HostPort"]))
                     for binds in (c.ports or {}).values() for b in binds or ()}
        assert (state.address, state.port) in published, (stat.server, state, published)
        assert _healthz(state.address, state.port) == 200, f"{c.name} fails /healthz"


def assert_servers_point_at_containers(dep: Deployment, client: docker.DockerClient) -> None:
    """Every server in HAProxy, in any state (a DOWN one left on a dead port included),
    and every server line of the installed config points at the published address and
    port of a running container of this environment with that server's name."""
    published: dict[str, set[tuple[str, int]]] = {}
    for c in dep.containers():
        if c.status == "running":
            published[identity.server_name("local", c.name)] = {
                (b["HostIp"], int(b["HostPort"]))
                for binds in (c.ports or {}).values() for b in binds or ()}
    runtime = {(s.backend, s.server, s.address, s.port)
               for s in parse_servers_state(dep.haproxy.stats.command("show servers state"))}
    assert runtime, "HAProxy has no server"
    for backend, server, address, port in sorted(runtime | config_servers(dep)):
        assert server in published, (
            f"{backend}/{server} points at {address}:{port}; no running container of that "
            f"name (running: {sorted(published)})")
        assert (address, port) in published[server], (
            f"{backend}/{server} points at {address}:{port}, its container publishes "
            f"{sorted(published[server])}")


def config_servers(dep: Deployment) -> set[tuple[str, str, str, int]]:
    """(backend, server, address, port) of the installed haproxy.cfg's server lines."""
    in_file: set[tuple[str, str, str, int]] = set()
    backend = ""
    for line in dep.haproxy.paths.config.read_text().splitlines():
        words = line.split()
        if line.startswith("backend "):
            backend = words[1]
        elif words[:1] == ["server"] and backend:
            address, port = words[2].rsplit(":", 1)
            in_file.add((backend, words[1], address, int(port)))
    return in_file


def assert_config_matches_runtime(dep: Deployment) -> None:
    """The installed haproxy.cfg lists exactly the servers HAProxy runs with (backend,
    name, address, port), so a reload or a restart of HAProxy brings back the same set."""
    in_file = config_servers(dep)
    running = {(s.backend, s.server, s.address, s.port)
               for s in parse_servers_state(dep.haproxy.stats.command("show servers state"))}
    assert in_file == running, (
        f"haproxy.cfg and HAProxy differ: only in the file {sorted(in_file - running)}, "
        f"only in HAProxy {sorted(running - in_file)}")


class ContainerCreates:
    """Names of the containers of ``env`` created while the block runs, read from Docker's
    event stream, subscribed to when the block starts.

    Not ``events(since=...)`` after the fact: the engine replays only its newest 256
    events, which the health-check execs of a busy engine (other tests' containers)
    overflow within seconds, so such a query misses creates it should see, and a check
    that nothing was created could not fail. The end of the block is marked by a
    container the recorder creates (never started) and removes again: once its create
    event has arrived, every earlier one has."""

    def __init__(self, client: docker.DockerClient, env: str,
                 marker_image: str = "sample-app:v1") -> None:
        self.client = client
        self.env = env
        self.marker_image = marker_image
        self.names: list[str] = []
        self._marker = f"reconciler-tests-mark-{os.getpid()}-{time.monotonic_ns()}"
        self._marked = threading.Event()
        self._since_ns = 0
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream is closed at the end
            for event in self._stream:
                attrs = event.get("Actor", {}).get("Attributes", {})
                if attrs.get("name") == self._marker:
                    self._marked.set()
                    return
                if (attrs.get(identity.ENVIRONMENT) == self.env
                        and int(event.get("timeNano", 0)) >= self._since_ns):
                    self.names.append(attrs.get("name", ""))

    def __enter__(self) -> ContainerCreates:
        now = time.time()
        self._since_ns = int(now * 1e9)
        # ``since`` (whole seconds) covers the moment between the daemon's answer and
        # its subscription; events before the block are dropped by their time
        self._stream = self.client.events(
            since=int(now), decode=True, filters={"type": "container", "event": "create"})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        marker = self.client.containers.create(self.marker_image, name=self._marker,
                                               command=["true"])
        try:
            marked = self._marked.wait(30)
        finally:
            marker.remove(force=True)
            self._stream.close()
            if self._thread is not None:
                self._thread.join(5)
        assert marked, "the Docker event stream did not deliver the end marker within 30s"


# --------------------------------------------------------------------------- dockerd


def _proc_state(pid: int) -> str | None:
    """Process state letter, None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _exited(pid: int) -> bool:
    return _proc_state(pid) in (None, "Z", "X")


@dataclass(frozen=True)
class DockerDaemon:
    """The running dockerd of the default socket, as /proc shows it."""

    pid: int
    argv: tuple[str, ...]
    exe: str
    cwd: str
    env: dict[str, str]
    log: str
    children: tuple[int, ...]

    @classmethod
    def find(cls) -> DockerDaemon:
        pid = cls._pid()
        proc = Path(f"/proc/{pid}")
        argv = tuple(proc.joinpath("cmdline").read_bytes().decode().split("\0")[:-1])
        env = dict(item.split("=", 1) for item in
                   proc.joinpath("environ").read_bytes().decode().split("\0") if "=" in item)
        out = os.readlink(proc / "fd" / "1")
        log = out if out.startswith("/") and Path(out).is_file() else \
            "/var/log/reconciler-tests-dockerd.log"
        children = tuple(
            int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(int(p.name)) == pid)
        return cls(pid, argv, os.readlink(proc / "exe"), os.readlink(proc / "cwd"), env, log,
                   children)

    @staticmethod
    def _pid() -> int:
        with contextlib.suppress(OSError, ValueError):
            pid = int(Path("/var/run/docker.pid").read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
                return pid
        found = [int(p.name) for p in Path("/proc").iterdir()
                 if p.name.isdigit() and _comm(int(p.name)) == "dockerd"]
        assert len(found) == 1, f"cannot tell which dockerd serves the default socket: {found}"
        return found[0]

    def stop(self, timeout: float = 60.0) -> None:
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in (self.pid, *self.children):
            while not _exited(pid):
                if time.monotonic() > deadline:
                    raise AssertionError(f"dockerd (pid {self.pid}) or its child {pid} did not "
                                         f"exit within {timeout:.0f}s of SIGTERM")
                time.sleep(0.05)

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                list(self.argv), executable=self.exe, cwd=self.cwd, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"dockerd exited ({proc.returncode}) while starting again; "
                    f"argv {list(self.argv)}; log {self.log}:\n{_tail(self.log)}")
            try:
                client = docker.from_env(timeout=5)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except docker.errors.DockerException as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise AssertionError(f"dockerd (pid {proc.pid}) did not answer within "
                                     f"{timeout:.0f}s: {last}; log {self.log}:\n"
                                     f"{_tail(self.log)}")
            time.sleep(0.2)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def _tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read: {exc})"


@contextlib.contextmanager
def restarted_dockerd() -> Iterator[DockerDaemon]:
    """Stop dockerd (SIGTERM, wait) and start it again with the same argv, environment,
    working directory and log; yields once it answers. Whatever fails in between, the
    daemon is started again before the error propagates."""
    daemon = DockerDaemon.find()
    proc: subprocess.Popen[bytes] | None = None
    try:
        daemon.stop()
        proc = daemon.start()
        daemon.wait_ready(proc)
    finally:
        if proc is None and _exited(daemon.pid):
            # stop() failed half-way: bring the engine back for the rest of the suite.
            daemon.wait_ready(daemon.start())
    yield daemon
