"""The executor: runs a Plan against the hosts' Docker engines and HAProxies, step by step.

It decides nothing: every action comes from the planner. What it adds is the health gate
and failure isolation. A service whose new containers fail their health gate (or whose
servers do not come UP in HAProxy) has those containers removed and every later action of
that service skipped, so its old release keeps all of its traffic; other services go on.
A config that ``haproxy -c`` rejects, or a reload that does not take, stops the run
(nothing installed, or the last good config restored); the next pass repairs the rest.
Every step is safe to re-run after a crash at any point: names are deterministic and
each action is checked against what exists.

Container steps run in parallel across hosts (at most ``concurrency`` hosts at a time,
in plan order within a host); everything else runs in plan order. Before the first of
a run of HAProxy config changes, the config of every LB host in that run is checked
with ``haproxy -c`` on its host: either every LB can take its new config, or none is
touched.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from reconciler import identity
from reconciler.apply.containers import (
    ContainerError,
    Started,
    create_and_start,
    free_port,
    health_deadline,
    remote_port_picker,
    stop_and_remove,
    wait_healthy,
)
from reconciler.desired.policy import Policy, SecretRules
from reconciler.errors import ReconcilerError
from reconciler.lb.haproxy.control import HAProxy, HAProxyError
from reconciler.lb.haproxy.render import RenderServer, render
from reconciler.model import DesiredState, HealthCheck, LoadBalancer, ObservedState
from reconciler.plan.actions import (
    Action,
    AddServer,
    ConfigureHAProxy,
    DrainServer,
    RemoveContainer,
    RemoveServer,
    RepointServer,
    SetWeight,
    StartContainer,
)
from reconciler.plan.planner import Plan
from reconciler.redact import Redactor
from reconciler.transport.pool import Connections

if TYPE_CHECKING:
    import docker

Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class StepResult:
    step: int
    action: Action
    status: Status
    detail: str
    duration_s: float


@dataclass
class ApplyResult:
    steps: list[StepResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # service (or "haproxy") -> why
    aborted: bool = False
    stopped: bool = False  # asked to stop (SIGTERM): the steps so far are a safe prefix
    notes: list[str] = field(default_factory=list)  # e.g. why a rollout stopped early
    # what the world shows that the plan did not promise (reconciler.plan.verify), after the pass
    mismatches: list[str] = field(default_factory=list)
    reloads: int = 0  # confirmed HAProxy reloads (on every LB host together)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.aborted and not self.mismatches


# Steps that run side by side (see ``Executor._parallel``).
_PARALLEL = (
    StartContainer,
    RemoveContainer,
    RepointServer,
    DrainServer,
    RemoveServer,
)
# LB steps whose servers are independent of each other: run side by side per server.
_PER_SERVER = (RepointServer, DrainServer, RemoveServer)


class _Abort(Exception):
    """Stop the run: HAProxy could not take a config; later steps would be unsafe."""


class _Skipped(Exception):
    """A step with nothing to do because the steps it follows were skipped; its text
    says why."""


# Steps that change what an LB host's next config says (counted per LB host, so that a
# config step after only skipped ones says it was skipped too).
_LB_CHANGES = (AddServer, RepointServer, SetWeight, DrainServer, RemoveServer)


class Executor:
    """Runs one plan. ``conns`` reaches every host; ``haproxies`` maps each LB host to
    its HAProxy controller."""

    def __init__(
        self,
        desired: DesiredState,
        observed: ObservedState,
        conns: Connections,
        haproxies: dict[str, HAProxy],
        on_step: Callable[[StepResult], None] | None = None,
        health_min_s: float = 30.0,
        should_stop: Callable[[], bool] = lambda: False,
        concurrency: int = 8,
        secret_rules: SecretRules | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.desired = desired
        # Where secrets may be read (the operator's policy; default: its defaults), and
        # what was read, for the pass to blank out of everything it records or prints.
        self.secret_rules = secret_rules or Policy().secret_rules(desired.environment)
        self.redactor = redactor or Redactor()
        self.secret_names = {
            s.name: sorted({ref.name for r in s.releases for ref in r.spec.secrets})
            for s in desired.services
        }
        self.should_stop = should_stop
        self.conns = conns
        self.haproxies = haproxies
        self.concurrency = max(1, concurrency)
        self.lock = threading.RLock()  # bookkeeping shared by the per-host threads
        self.hosts = {h.name: h for h in desired.hosts}
        for h in observed.hosts:
            if h.name not in self.hosts:  # a retired host: known to ``conns`` only
                self.hosts[h.name] = conns.hosts[h.name]
        self.on_step = on_step or (lambda _: None)
        self.health_min_s = health_min_s
        self.result = ApplyResult()
        self.address = {h.name: h.address for h in desired.hosts}
        self.health = {s.name: s.releases[0].spec.health for s in desired.services}
        # (app host, container name) -> published (address, port), from live state + starts
        self.ports: dict[tuple[str, str], tuple[str, int]] = {
            (h.name, c.name): c.published
            for h in observed.hosts
            for c in h.containers
            if c.published
        }
        # LB host -> (backend, server) -> what the next rendered config says
        self.table: dict[str, dict[tuple[str, str], RenderServer]] = {
            lb.host: {
                (s.backend, s.server): RenderServer(
                    s.backend, s.server, s.address, s.port, s.weight
                )
                for s in lb.servers
            }
            for lb in observed.haproxy
        }
        self.started: dict[str, list[tuple[str, Started]]] = {}  # service -> (host, container)
        self.pending: list[tuple[StartContainer, Started]] = []  # started, not yet gated
        self.gated: set[tuple[str, str]] = set()
        self.added: dict[str, list[tuple[str, str]]] = {}  # LB host -> servers added
        self.needs_reload: set[str] = set()  # LB hosts where a runtime change was refused
        self.drain_s = {s.name: s.drain_timeout_s for s in desired.services}
        self.pickers: dict[str, Callable[[str], int]] = {}
        # LB host -> (text, checked file) verified for its next install
        self.checked: dict[str, tuple[str, Path]] = {}
        # LB host -> statuses of its server steps since its last config step
        self.lb_steps: dict[str, Counter[str]] = {}

    def client(self, host: str) -> docker.DockerClient:
        return self.conns.get(host).docker()

    def _port_picker(self, host: str) -> Callable[[str], int]:
        with self.lock:
            if host not in self.pickers:
                if self.hosts[host].ssh is None:
                    self.pickers[host] = free_port
                else:
                    used = [port for (h, _), (_, port) in self.ports.items() if h == host]
                    self.pickers[host] = remote_port_picker(used)
            return self.pickers[host]

    # ------------------------------------------------------------------ driver

    def run(self, plan: Plan) -> ApplyResult:
        actions = list(enumerate(plan.actions, 1))
        i = 0
        try:
            while i < len(actions):
                step, action = actions[i]
                if not isinstance(action, StartContainer):
                    self._gate()
                if self.should_stop():
                    # Every prefix of a plan leaves HAProxy on healthy containers only
                    # (the order of the phases guarantees it); the next pass goes on.
                    self.result.stopped = True
                    break
                if isinstance(action, _PARALLEL):
                    j = i
                    while j < len(actions) and type(actions[j][1]) is type(action):
                        j += 1
                    self._parallel(actions[i:j])
                    i = j
                    continue
                if isinstance(action, ConfigureHAProxy) and action.reload:
                    j = i
                    while j < len(actions) and isinstance(actions[j][1], ConfigureHAProxy):
                        j += 1
                    self._verify_all(actions[i:j])
                self._emit(self._step(step, action))
                i += 1
            self._gate()
        except _Abort:
            self.result.aborted = True
        finally:
            for host, (_, path) in self.checked.items():  # verified, never installed
                self.haproxies[host].transport.unlink(str(path))
        return self.result

    def _emit(self, res: StepResult) -> None:
        self.result.steps.append(res)
        self.on_step(res)
        if isinstance(res.action, ConfigureHAProxy) and res.status == "failed":
            self.result.aborted = True
            raise _Abort

    def _parallel(self, batch: list[tuple[int, Action]]) -> None:
        """Steps of one kind: each host's in plan order, hosts in parallel; results are
        reported in plan order once all are done."""
        by_host: dict[str, list[tuple[int, Action]]] = defaultdict(list)
        for step, action in batch:
            # Servers of one LB host are independent of each other: drained (and
            # deleted) side by side, not one after the other.
            key = action.host
            if isinstance(action, _PER_SERVER):
                key += "/" + action.server
            by_host[key].append((step, action))

        def run_host(items: list[tuple[int, Action]]) -> list[StepResult]:
            return [self._step(step, action) for step, action in items]

        if len(by_host) == 1:
            results = run_host(batch)
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(by_host))) as pool:
                results = [r for rs in pool.map(run_host, by_host.values()) for r in rs]
        for res in sorted(results, key=lambda r: r.step):
            self._emit(res)

    def _step(self, step: int, action: Action) -> StepResult:
        t0 = time.monotonic()
        status: Status = "ok"
        detail = ""
        if self.result.aborted:
            status, detail = "skipped", "the run stopped at a failed HAProxy config"
        elif action.service and action.service in self.result.failures:
            why = self.result.failures[action.service].splitlines()[0]
            status, detail = "skipped", f"{action.service} failed in this pass ({why})"
        else:
            try:
                detail = self._do(action) or ""
            except _Skipped as exc:
                status, detail = "skipped", str(exc)
            except ReconcilerError as exc:  # ContainerError, HAProxyError, ObserveError
                status, detail = "failed", str(exc)
                with self.lock:
                    self._fail(action, str(exc))
        if isinstance(action, _LB_CHANGES):
            with self.lock:
                self.lb_steps.setdefault(action.host, Counter())[status] += 1
        return StepResult(step, action, status, detail, time.monotonic() - t0)

    def _verify_all(self, configs: list[tuple[int, Action]]) -> None:
        """Render and check the next config of every LB host in ``configs`` before any is
        installed; one that ``haproxy -c`` refuses stops the run with none switched."""
        if len(configs) < 2:
            return
        for step, a in configs:
            lb = self.haproxies[a.host]
            try:
                text = self._render(a.host)  # PrivilegeError: the host lacks a user
                self._check_binds(a.host)
                self.checked[a.host] = (text, lb.check(text))
            except ReconcilerError as exc:
                self._emit(StepResult(step, a, "failed", f"{exc} (no LB host was switched)", 0.0))

    def _fail(self, action: Action, why: str) -> None:
        key = action.service or "haproxy"
        self.result.failures.setdefault(key, why)
        if action.service:
            self._undo_starts(action.service)

    def _undo_starts(self, service: str) -> None:
        """Remove the containers this run started for ``service`` (on every host): the old
        release keeps serving. Their servers are taken out of the next config too."""
        for host, started in self.started.pop(service, []):
            stop_and_remove(self.client(host), started.name, grace_s=1)
            server = identity.server_name(host, started.name)
            for table in self.table.values():
                for key in [k for k in table if k[1] == server]:
                    del table[key]
        self.pending = [(a, s) for a, s in self.pending if a.service != service]

    # ------------------------------------------------------------------ actions

    def _do(self, action: Action) -> str | None:
        if isinstance(action, RemoveContainer):
            return self._remove_container(action)
        if isinstance(action, StartContainer):
            return self._start(action)
        if isinstance(action, AddServer):
            return self._add_server(action)
        if isinstance(action, RepointServer):
            return self._repoint(action)
        if isinstance(action, SetWeight):
            self.haproxies[action.host].set_weight(action.backend, action.server, action.weight)
            self._set_table_weight(action.host, action.backend, action.server, action.weight)
            return None
        if isinstance(action, DrainServer):
            return self._drain(action)
        if isinstance(action, RemoveServer):
            return self._remove_server(action)
        if isinstance(action, ConfigureHAProxy):
            return self._configure(action)
        raise ReconcilerError(f"unknown action {action.kind}")

    def _start(self, a: StartContainer) -> str:
        assert a.spec is not None and a.service is not None
        if not a.image_id:
            raise ContainerError(f"image {a.spec.image} is not on host {a.host}")
        labels = identity.container_labels(
            self.desired.environment,
            a.service,
            a.revision,
            a.config_hash,
            a.replica,
            self.desired.commit,
            a.spec,
            a.image_id,
            self.desired.instance.name,
            self.desired.instance.label_key,
        )
        started = create_and_start(
            self.client(a.host),
            name=a.name,
            labels=labels,
            spec=a.spec,
            image_id=a.image_id,
            address=self.address[a.host],
            host=a.host,
            secret_rules=self.secret_rules,
            redactor=self.redactor,
            transport=self.conns.get(a.host),
            pick_port=self._port_picker(a.host),
        )
        with self.lock:
            if a.service in self.result.failures:  # failed on another host meanwhile
                stop_and_remove(self.client(a.host), started.name, grace_s=1)
                return "removed again: the service failed on another host"
            self.started.setdefault(a.service, []).append((a.host, started))
            self.ports[(a.host, a.name)] = (started.address, started.port)
            self.pending.append((a, started))
        return f"published on {started.address}:{started.port}"

    def _gate(self) -> None:
        """Wait, in parallel, until every container started since the last gate is healthy;
        a service with one that is not fails as a whole."""
        pending, self.pending = self.pending, []
        if not pending:
            return

        def wait(item: tuple[StartContainer, Started]) -> str | None:
            a, s = item
            assert a.spec is not None
            try:
                wait_healthy(
                    self.client(a.host),
                    s.name,
                    a.spec.health,
                    s.address,
                    s.port,
                    health_deadline(a.spec.health, self.health_min_s),
                    self.conns.get(a.host),
                    self.redactor,
                    self.secret_names.get(a.service or "", ()),
                )
            except ReconcilerError as exc:
                return f"host {a.host}: {exc}"
            return None

        with ThreadPoolExecutor(max_workers=min(32, len(pending))) as pool:
            outcomes = list(pool.map(wait, pending))
        for (a, s), error in zip(pending, outcomes, strict=True):
            if error is None:
                self.gated.add((a.host, s.name))
            elif a.service and a.service not in self.result.failures:
                self.result.failures[a.service] = error
                self._undo_starts(a.service)

    def _gated_address(self, a: AddServer | RepointServer) -> tuple[str, int]:
        """Where the server's container answers, once it passed its health gate (one
        started by an earlier, maybe interrupted, pass is gated here before it gets
        traffic; an unhealthy one is removed like a container of this pass)."""
        where = self.ports.get((a.app_host, a.container))
        if where is None:
            raise ContainerError(
                f"container {a.container} on {a.app_host} has no published port; it is not running"
            )
        if (a.app_host, a.container) not in self.gated:
            health = self.health.get(a.service or "", HealthCheck(kind="none"))
            try:
                wait_healthy(
                    self.client(a.app_host),
                    a.container,
                    health,
                    where[0],
                    where[1],
                    health_deadline(health, self.health_min_s),
                    self.conns.get(a.app_host),
                    self.redactor,
                    self.secret_names.get(a.service or "", ()),
                )
            except ContainerError:
                stop_and_remove(self.client(a.app_host), a.container, grace_s=1)
                raise
            with self.lock:
                self.gated.add((a.app_host, a.container))
        return where

    def _add_server(self, a: AddServer) -> str | None:
        address, port = self._gated_address(a)
        self.table.setdefault(a.host, {})[(a.backend, a.server)] = RenderServer(
            a.backend, a.server, address, port, a.weight
        )
        self.added.setdefault(a.host, []).append((a.backend, a.server))
        return None

    def _repoint(self, a: RepointServer) -> str:
        """Point the server at its container; done when HAProxy reports it UP there."""
        address, port = self._gated_address(a)
        lb = self.haproxies[a.host]
        lb.set_address(a.backend, a.server, address, port)
        with self.lock:
            table = self.table.setdefault(a.host, {})
            old = table.get((a.backend, a.server))
            weight = old.weight if old else 0
            table[(a.backend, a.server)] = RenderServer(a.backend, a.server, address, port, weight)
        if lb.wait_up([(a.backend, a.server)], timeout=self.health_min_s):
            raise HAProxyError(
                f"server {a.backend}/{a.server} did not come UP at {address}:{port} "
                f"within {self.health_min_s:.0f}s"
            )
        return f"now at {address}:{port}, UP"

    def _remove_container(self, a: RemoveContainer) -> str | None:
        detail = self._wait_old_sessions(a)
        gone = stop_and_remove(self.client(a.host), a.name, a.grace_s)
        return detail or (None if gone else "already gone")

    def _wait_old_sessions(self, a: RemoveContainer) -> str | None:
        """Before a container is stopped: an HAProxy process of an earlier config (left by
        a reload) may still be finishing requests on it; the drain saw only the current
        process. Wait for those sessions, at most the service's drain timeout."""
        if a.service is None:
            return None
        key = (identity.backend_name(a.service), identity.server_name(a.host, a.name))
        timeout = self.drain_s.get(a.service, 30)
        deadline = time.monotonic() + timeout
        for lb in self.haproxies.values():
            if not lb.running():
                continue
            while lb.old_worker_sessions([key]):
                if time.monotonic() > deadline:
                    return (
                        f"an HAProxy process of an earlier config still had sessions on it "
                        f"after {timeout}s; stopped anyway"
                    )
                time.sleep(0.05)
        return None

    def _remove_server(self, a: RemoveServer) -> str | None:
        with self.lock:
            self.table.get(a.host, {}).pop((a.backend, a.server), None)
        lb = self.haproxies[a.host]
        try:
            lb.delete_server(a.backend, a.server, timeout=self.drain_s.get(a.service or "", 30))
        except HAProxyError as exc:
            with self.lock:
                self.needs_reload.add(a.host)  # the config without it is loaded instead
            return f"{exc}; HAProxy will be reloaded instead"
        return None

    def _set_table_weight(self, lb_host: str, backend: str, server: str, weight: int) -> None:
        with self.lock:
            table = self.table.setdefault(lb_host, {})
            if (backend, server) not in table:
                return
            old = table[(backend, server)]
            table[(backend, server)] = RenderServer(
                old.backend, old.name, old.address, old.port, weight
            )

    def _drain(self, a: DrainServer) -> str | None:
        lb = self.haproxies[a.host]
        try:
            lb.drain(a.backend, a.server)
        except HAProxyError as exc:
            if "No such" in str(exc):
                return "not in HAProxy any more"
            raise
        self._set_table_weight(a.host, a.backend, a.server, 0)
        if not lb.wait_drained(a.backend, a.server, a.timeout_s):
            return f"sessions still open after {a.timeout_s}s; removed anyway"
        return None

    def _lbdef(self, lb_host: str) -> LoadBalancer:
        return next(x for x in self.desired.loadbalancers if lb_host in x.hosts)

    def _render(self, lb_host: str) -> str:
        lb = self.haproxies[lb_host]
        servers = self.table.get(lb_host, {}).values()
        return render(self.desired, self._lbdef(lb_host), servers, lb.paths, lb.run_as())

    def _check_binds(self, lb_host: str) -> None:
        """Raise, installing nothing, when the LB host cannot give HAProxy a bind the new
        config adds (``haproxy -c`` does not check; a reload that fails to bind refuses
        new connections on every frontend for seconds)."""
        lb = self.haproxies[lb_host]
        binds = [(fe.name, fe.bind_address, fe.bind_port) for fe in self._lbdef(lb_host).frontends]
        problems = lb.bind_problems(binds)
        if problems:
            on = "" if self.hosts[lb_host].ssh is None else f"LB host {lb_host}: "
            raise HAProxyError(
                f"{on}the new config binds what this host cannot give HAProxy; nothing "
                "installed: " + "; ".join(problems)
            )

    def _configure(self, a: ConfigureHAProxy) -> str:
        lb = self.haproxies[a.host]
        # Raises, installing nothing, if haproxy -c refuses (a config verified together
        # with the other LB hosts' is not checked twice).
        text = self._render(a.host)
        verified, path = self.checked.pop(a.host, (None, None))
        if path is not None and verified != text:
            lb.transport.unlink(str(path))
            path = None
        if path is None:
            self._check_binds(a.host)
        changed = lb.install(text, path)
        steps = self.lb_steps.pop(a.host, Counter())
        if not lb.running():
            lb.start()
            what = "started HAProxy"
        elif a.host in self.needs_reload or (a.reload and changed):
            lb.reload()
            self.needs_reload.discard(a.host)
            with self.lock:
                self.result.reloads += 1
            what = "reloaded HAProxy (confirmed)"
        elif not changed and steps["skipped"] and not steps["ok"]:
            failed = ", ".join(sorted(k for k in self.result.failures if k != "haproxy"))
            raise _Skipped(
                f"nothing to write: the steps it follows were skipped ({failed or 'see above'} "
                "failed); HAProxy keeps its config, no reload"
            )
        elif a.reload:
            what = "config unchanged; no reload needed"
        else:
            what = "config written" if changed else "config unchanged"
        added = self.added.pop(a.host, [])
        if added and a.reload:
            not_up = lb.wait_up(added, timeout=self.health_min_s)
            for backend, server in added:
                if f"{backend}/{server}" in not_up:
                    service = identity.parse_backend_name(backend)
                    self.result.failures.setdefault(
                        service, f"server {backend}/{server} did not come UP in HAProxy"
                    )
                    lb.drain(backend, server)
            if not_up:
                return f"{what}; not UP: {', '.join(not_up)}"
        return what
