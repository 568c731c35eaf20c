"""The executor: runs a Plan against the hosts' container engines and load balancers,
step by step.

It decides nothing: every action comes from the planner, and each is dispatched by its
type to the handler of its kind (``ContainerSteps``, ``LBSteps``). What the loop adds is
the health gate and failure isolation:

- A service whose step fails (a container that cannot start, a new container that fails
  its health gate, a server pointed at its container that does not come UP) fails as a
  whole: the containers the run started for it are removed on every host and every
  later step of it is skipped, so its old release keeps all of its traffic; other
  services go on. A server added for a reload that is not UP after it is drained and
  fails its service (``LBSteps.configure``); its container is left running.
- A config step after only skipped server steps writes nothing, reloads nothing and
  says why; a drain that times out removes the server anyway (not a failure).
- A config that the load balancer rejects, or a reload that does not take, stops the run
  (nothing installed, or the last good config restored); the next pass repairs the rest.
- Asked to stop (``should_stop``), the run ends between two steps: every prefix of a plan
  leaves the load balancers on healthy containers only.
- Before every step (and after every wait for health, which may be long, before what
  follows it) the run calls ``guard``; when it raises ``FencedOut`` (etcd mode: this
  replica is no longer the confirmed leader) the run ends there as stopped, with
  ``fenced`` saying why, and takes no further step on any host: steps already running
  on other hosts finish, none starts, and a step whose health wait outlived the
  leadership is not recorded and changes nothing.

Every step is safe to re-run after a crash at any point: names are deterministic and
each action is checked against what exists.

Container starts and removals run side by side, each container on its own (at most
``concurrency`` at a time over all hosts: a service's replicas start together, not one
after the other), and so do the drains and removals of servers; other container steps
run in parallel across hosts, in plan order within a host; everything else runs in plan
order. Before the first of a run of config steps, the config of every
LB host in that run is checked on its host: either every LB can take its new config, or
none is touched.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from reconciler.apply.acme_steps import AcmeSteps
from reconciler.apply.container_steps import ContainerSteps
from reconciler.apply.engines import Engines
from reconciler.apply.lb_steps import LBSteps
from reconciler.apply.results import ApplyResult, Ledger, Status, StepResult, StepSkipped
from reconciler.errors import FencedOut, ReconcilerError
from reconciler.lb.port import LoadBalancerPort
from reconciler.model import DesiredState, ObservedState
from reconciler.plan.actions import (
    Action,
    AddServer,
    ConfigureLB,
    DrainServer,
    ObtainCertificate,
    RemoveContainer,
    RemoveServer,
    ReplaceCertificate,
    RepointServer,
    SetWeight,
    StartContainer,
)
from reconciler.plan.planner import Plan

# Steps that run side by side (see ``Executor._parallel``).
_PARALLEL = (
    StartContainer,
    RemoveContainer,
    AddServer,
    RepointServer,
    DrainServer,
    RemoveServer,
    ReplaceCertificate,
)
# LB steps whose servers are independent of each other: run side by side per server.
_PER_SERVER = (AddServer, RepointServer, DrainServer, RemoveServer)
# Container steps whose containers are independent of each other: side by side too.
_PER_CONTAINER = (StartContainer, RemoveContainer)

A = TypeVar("A", bound=Action)
Handler = Callable[[Action], str | None]


def handler(kind: type[A], run: Callable[[A], str | None]) -> tuple[type[Action], Handler]:
    """A registry entry: ``run`` for the actions of type ``kind``."""

    def dispatch(action: Action) -> str | None:
        assert isinstance(action, kind)
        return run(action)

    return kind, dispatch


class _Abort(Exception):
    """Stop the run: a load balancer could not take a config; later steps would be unsafe."""


class Executor:
    """Runs one plan: containers through ``engines``, load balancers through ``lbs``
    (LB host -> its port)."""

    def __init__(
        self,
        desired: DesiredState,
        observed: ObservedState,
        engines: Engines,
        lbs: Mapping[str, LoadBalancerPort],
        on_step: Callable[[StepResult], None] | None = None,
        health_min_s: float = 30.0,
        should_stop: Callable[[], bool] = lambda: False,
        concurrency: int = 8,
        guard: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_step = on_step or (lambda _: None)
        self.should_stop = should_stop
        self.guard = guard
        self.concurrency = max(1, concurrency)
        self.ledger = Ledger()
        self.result = self.ledger.result
        self.container_steps = ContainerSteps(desired, observed, engines, self.ledger, health_min_s)
        self.lb_steps = LBSteps(desired, observed, lbs, self.ledger, self._gated, health_min_s)
        self.registry: dict[type[Action], Handler] = dict(
            [
                handler(StartContainer, self.container_steps.start),
                handler(RemoveContainer, self._remove_container),
                handler(AddServer, self.lb_steps.add_server),
                handler(RepointServer, self.lb_steps.repoint),
                handler(SetWeight, self.lb_steps.set_weight),
                handler(DrainServer, self.lb_steps.drain),
                handler(RemoveServer, self.lb_steps.remove_server),
                handler(ConfigureLB, self.lb_steps.configure),
                handler(ReplaceCertificate, self.lb_steps.replace_certificate),
                handler(ObtainCertificate, AcmeSteps(desired, lbs).obtain),
            ]
        )

    def _gated(self, a: AddServer | RepointServer) -> tuple[str, int]:
        """Where the server's container answers once healthy; the wait for its health
        can be long, so the guard is asked again before the server is touched."""
        where = self.container_steps.gated_address(a)
        self.guard()
        return where

    def _remove_container(self, a: RemoveContainer) -> str | None:
        waited = self.lb_steps.wait_old_sessions(a)  # sessions of an earlier config's processes
        removed = self.container_steps.remove(a)
        deleted = self.lb_steps.delete_deferred(a)  # servers its long-lived sessions held
        return waited or removed or deleted

    # ------------------------------------------------------------------ driver

    def run(self, plan: Plan) -> ApplyResult:
        actions = list(enumerate(plan.actions, 1))
        self.lb_steps.expect(plan.actions)
        for host in dict.fromkeys(a.host for a in plan.actions if isinstance(a, ConfigureLB)):
            self.lb_steps.lbs[host].prepare()  # what its config needs, found meanwhile
        i = 0
        try:
            while i < len(actions):
                step, action = actions[i]
                if not isinstance(action, StartContainer):
                    self.guard()
                    if isinstance(action, AddServer):  # the configs checked during the gate
                        self.lb_steps.check_ahead(self.container_steps.published)
                    self._gate()
                if self.should_stop():
                    # Every prefix of a plan leaves HAProxy on healthy containers only
                    # (the order of the phases guarantees it); the next pass goes on.
                    self.result.stopped = True
                    break
                j = _end_of_kind(actions, i)
                if isinstance(action, _PARALLEL):
                    self._parallel(actions[i:j])
                    i = j
                    continue
                if isinstance(action, ConfigureLB):
                    self._verify_all(actions[i:j])
                self._emit(self._step(step, action))
                i += 1
            self.guard()
            self._gate()
        except _Abort:
            self.result.aborted = True
        except FencedOut as exc:
            self.result.stopped = True
            self.result.fenced = str(exc)
            self.result.notes.append(f"fenced out: {exc}")
        finally:
            self.lb_steps.checked.discard()  # the configs checked, never installed
        return self.result

    def _emit(self, res: StepResult) -> None:
        self.result.steps.append(res)
        self.on_step(res)
        if isinstance(res.action, ConfigureLB) and res.status == "failed":
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
            elif isinstance(action, _PER_CONTAINER):
                key += "/" + action.name
            by_host[key].append((step, action))

        fenced: list[FencedOut] = []

        def run_host(items: list[tuple[int, Action]]) -> list[StepResult]:
            done = []
            for step, action in items:
                try:
                    done.append(self._step(step, action))
                except FencedOut as exc:
                    fenced.append(exc)
                    break
            return done

        if len(by_host) == 1:
            results = run_host(batch)
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(by_host))) as pool:
                results = [r for rs in pool.map(run_host, by_host.values()) for r in rs]
        for res in sorted(results, key=lambda r: r.step):
            self._emit(res)
        if fenced:
            raise fenced[0]

    def _step(self, step: int, action: Action) -> StepResult:
        self.guard()  # FencedOut: not even a skipped step is recorded
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
                detail = self._dispatch(action) or ""
            except FencedOut:
                raise  # not a failure of the service: nothing may be undone now
            except StepSkipped as exc:
                status, detail = "skipped", str(exc)
            except ReconcilerError as exc:  # ContainerError, LBError, ObserveError
                status, detail = "failed", str(exc)
                self._fail(action, str(exc))
        self.lb_steps.count(action, status)
        return StepResult(step, action, status, detail, time.monotonic() - t0)

    def _dispatch(self, action: Action) -> str | None:
        run = self.registry.get(type(action))
        if run is None:
            raise ReconcilerError(f"unknown action {action.kind}")
        return run(action)

    def _verify_all(self, configs: list[tuple[int, Action]]) -> None:
        """Render and check the next config of every LB host in ``configs`` before any is
        installed; one that is refused stops the run with none switched."""
        if len(configs) < 2:
            return
        for step, a in configs:
            try:
                self.lb_steps.verify(a.host)
            except ReconcilerError as exc:
                why = f"{exc} (no LB host was switched)"
                self._fail(a, why)  # recorded as "haproxy failed", as a failed step is
                self._emit(StepResult(step, a, "failed", why, 0.0))

    # ------------------------------------------------------------------ failures

    def _gate(self) -> None:
        """The health gate of the containers started since the last one: a service with
        one that is not healthy fails as a whole."""
        for service, why in self.container_steps.gate():
            self.guard()  # the wait may have outlived the leadership: then undo nothing
            with self.ledger.lock:
                if self.ledger.fail(service, why):
                    self._undo(service)

    def _fail(self, action: Action, why: str) -> None:
        """A step failed: its service fails as a whole (or, for a step of no service,
        the run records an "haproxy" failure)."""
        with self.ledger.lock:
            self.ledger.fail(action.service or "haproxy", why)
            if action.service:
                self._undo(action.service)

    def _undo(self, service: str) -> None:
        """Remove the containers this run started for ``service``, on every host; their
        servers leave the next configs (and HAProxy, those added at runtime)."""
        self.lb_steps.withdraw(service)
        self.lb_steps.forget_containers(self.container_steps.undo_starts(service))


def _end_of_kind(actions: list[tuple[int, Action]], i: int) -> int:
    """The index after the steps from ``i`` on of the same type as step ``i``."""
    j = i + 1
    while j < len(actions) and type(actions[j][1]) is type(actions[i][1]):
        j += 1
    return j
