"""The reconcile session: the one owner of the history, the host connections and the
load balancers of a target, and the one place where observe -> plan happens."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.apply.passresult import PassResult
from reconciler.apply.results import StepResult
from reconciler.canary.pair import canary_pair
from reconciler.desired.policy import Policy
from reconciler.errors import ReconcilerError
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.lb.port import LoadBalancerPort
from reconciler.model import DesiredState, Host, ObservedState
from reconciler.observe.live import lb_paths, observe
from reconciler.plan.planner import Plan, plan
from reconciler.redact import Redactor
from reconciler.session.passrun import PassRun
from reconciler.store import Retention, Store
from reconciler.transport.pool import Connections

if TYPE_CHECKING:  # imported where used: a pass without canaries or records needs neither,
    # and only etcd mode with agents needs reconciler.agent (and etcd's client)
    from reconciler.canary.engine import CanaryState
    from reconciler.records.collector import LBTarget

DEFAULT_RETENTION = Retention()


@dataclass(frozen=True)
class Preview:
    """What a pass would start from, without changing anything: the desired state with
    the stored canary weights (``desired``), the world as observed (retired hosts
    included), the services held at this commit, and the plan that follows."""

    desired: DesiredState
    observed: ObservedState
    held: Mapping[str, str]
    plan: Plan


class ScrubbedError(ReconcilerError):
    """An error whose message held a secret value, with the value blanked out."""


class Session:
    """One reconciler's session with one target: it owns the history ``Store`` of the
    state directory, the connections to the hosts and the LB controllers on them.

    The sequence observe -> held services -> retired hosts -> canary weights -> plan
    exists here only (``preview``, ``apply``); commands and ``watch`` are adapters over
    it. SSH connections stay open across passes of one session (``watch`` keeps one
    session for its life) and are reopened when a host's definition changes or after a
    pass that raised or failed (a connection that broke is not reused); the local
    engine is reached afresh by every pass (cheap, and a restarted dockerd or a moved
    socket is seen at once). ``read_only``: a session of a
    command that changes nothing (``plan``) creates no state: without a history it
    reads none. Use as a context manager, or ``close()``.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        external: HAProxyPaths | None = None,
        policy: Policy | None = None,
        read_only: bool = False,
        record_requests: bool = True,
    ) -> None:
        self.state_dir = state_dir
        self.external = external
        self.policy = policy or Policy()
        # Each pass ingests the request log ring it reads into the records database;
        # off under `watch`, whose collectors stream it (reconciler.records.collector).
        self.record_requests = record_requests
        db = state_dir / "history.sqlite"
        self._store = None if read_only and not db.exists() else Store(db)
        self._conns: Connections | None = None

    # ----------------------------------------------------------------- resources

    @property
    def store(self) -> Store | None:
        """The history (None: a read-only session of a state dir without one)."""
        return self._store

    def require_store(self) -> Store:
        if self._store is None:
            raise ReconcilerError(f"no history in {self.state_dir}")
        return self._store

    def connections(self, desired: DesiredState, retired: Iterable[Host] = ()) -> Connections:
        """The connections to every host of ``desired`` and ``retired``; a host whose
        definition changed since they were opened gets a new one."""
        hosts = {h.name: h for h in (*desired.hosts, *retired)}
        if self._conns is not None and any(
            self._conns.hosts.get(n, h) != h for n, h in hosts.items()
        ):
            self.reset()
        if self._conns is None:
            self._conns = Connections()
        for h in hosts.values():
            self._conns.add(h)
        return self._conns

    def lbs(self, desired: DesiredState) -> dict[str, LoadBalancerPort]:
        """The HAProxy controller of each LB host, on that host's connection."""
        conns = self.connections(desired)
        return {
            h: HAProxy(
                lb_paths(desired, self.state_dir, self.external, desired.host(h)),
                transport=conns.get(h),
            )
            for lb in desired.loadbalancers
            for h in lb.hosts
        }

    def lb_targets(self, desired: DesiredState, observed: ObservedState) -> dict[str, LBTarget]:
        """How the records collector reaches each LB host's request log (its stats
        socket on that host's connection, the worker the last look found)."""
        from reconciler.records.collector import LBTarget

        conns = self.connections(desired)
        return {
            h: LBTarget(
                host=h,
                transport=conns.get(h),
                socket=str(
                    lb_paths(desired, self.state_dir, self.external, desired.host(h)).stats_socket
                ),
                enabled=lb.request_records,
                worker_pid=observed.lb(h).worker_pid,
            )
            for lb in desired.loadbalancers
            for h in lb.hosts
        }

    def _fresh_local(self) -> None:
        """A pass starts with a new connection to the local engine (see the class)."""
        if self._conns is not None:
            self._conns.close_local()

    def reset(self) -> None:
        """Close every connection; the next use opens new ones."""
        conns, self._conns = self._conns, None
        if conns is not None:
            conns.close()

    def close(self) -> None:
        self.reset()
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ----------------------------------------------------------------- the desired view

    def held(self, desired: DesiredState) -> dict[str, str]:
        """Services whose apply failed at this commit (service -> why); left as they run."""
        if self._store is None:
            return {}
        return self._store.failed_services(desired.environment, desired.commit)

    def retired(self, desired: DesiredState) -> list[Host]:
        """App hosts the environment used in an earlier pass and does not use now."""
        if self._store is None:
            return []
        now = desired.app_host_names
        return [h for h in self._store.app_hosts(desired.environment) if h.name not in now]

    def canaries(self, environment: str) -> dict[str, CanaryState]:
        """The stored state of every canary under analysis in ``environment``."""
        if self._store is None:
            return {}
        stored = self._store.canaries(environment)
        if not stored:
            return {}
        from reconciler.canary.engine import CanaryState

        return {svc: CanaryState.from_json(t) for svc, t in stored.items()}

    def has_canaries(self, desired: DesiredState) -> bool:
        """Whether ``desired`` declares a canary or one is stored for its environment."""
        return any(canary_pair(s) for s in desired.services) or bool(
            self.canaries(desired.environment))

    def judge_canaries(self, desired: DesiredState, observed: ObservedState,
                       events: Mapping[str, str]) -> DesiredState:
        """One look at every canary (``reconciler.canary.engine.evaluate``) from the LB
        hosts' counters in ``observed`` and request logs in ``events`` (LB host -> ring
        text; none: latency is not judged), stored; the desired state with the weights
        that follow from it."""
        from reconciler.canary.engine import evaluate, overlay  # only with canaries

        env = desired.environment
        before = self.canaries(env)
        after = evaluate(desired, observed, before, time.time(), events)
        for service in before.keys() - after.keys():
            self.save_canary(env, service, None)
        for service, state in after.items():
            self.save_canary(env, service, state)
        return overlay(desired, after)

    def _judge_shared_canaries(self, desired: DesiredState,
                               guard: Callable[[], None]) -> DesiredState:
        """etcd mode with agents: the canaries' states come from etcd (where the leader
        keeps them, so a replica that takes over goes on from them, a promoted canary
        stays promoted), are judged from the LB agents' counters (errors, not latency:
        the request log is not published) and written back, fenced."""
        from reconciler.agent.leaderpass import (
            drive_for,
            observe_canaries,
            share_canaries,
            shared_canaries,
        )
        from reconciler.cluster.publish import Fence, NoFence

        env, store = desired.environment, self.require_store()
        drive = drive_for(desired, guard if isinstance(guard, Fence) else NoFence())
        try:
            shared = shared_canaries(drive)
            for service in store.canaries(env).keys() - shared.keys():
                store.save_canary(env, service, None)
            for service, text in shared.items():
                store.save_canary(env, service, text)
            if not self.has_canaries(desired):
                return desired
            guard()
            judged = self.judge_canaries(desired, observe_canaries(drive), {})
            share_canaries(drive, store.canaries(env))
            return judged
        finally:
            drive.client.close()

    def with_canaries(self, desired: DesiredState) -> DesiredState:
        """``desired`` with the weights of its canaries' current steps, as the last pass
        left them (for plans and drift checks, which judge nothing)."""
        if not any(canary_pair(s) for s in desired.services):
            return desired
        from reconciler.canary.engine import overlay

        return overlay(desired, self.canaries(desired.environment))

    def last_commit(self, environment: str) -> str | None:
        """The last commit applied to ``environment`` without a failure."""
        return None if self._store is None else self._store.last_commit(environment)

    # ----------------------------------------------------------------- look and plan

    def observe(self, desired: DesiredState) -> ObservedState:
        """Live state of every host ``desired`` touches and of the retired app hosts.
        Raises ObserveError naming a host that cannot be read (connections are then
        reopened by the next call)."""
        if desired.coordination.agents:
            from reconciler.agent.leaderpass import observe_reports

            return observe_reports(desired)
        retired = self.retired(desired)
        try:
            return observe(
                desired, self.state_dir, self.external, self.connections(desired, retired), retired
            )
        except ReconcilerError:
            self.reset()
            raise

    def preview(self, desired: DesiredState) -> Preview:
        """Observe and plan as a pass would, changing nothing and judging no canary (in
        etcd mode with the leader's holds, as a pass of this replica would adopt them)."""
        self._fresh_local()
        held = self.held(desired)
        if desired.coordination.mode == "etcd":
            from reconciler.cluster.shared import held_elsewhere

            held = {**held_elsewhere(desired, self.last_commit(desired.environment)), **held}
        view = self.with_canaries(desired)
        observed = self.observe(desired)
        if not desired.coordination.agents:
            return Preview(view, observed, held, plan(view, observed, held))
        from reconciler.agent.drive import container_part, silent_hosts, with_silent_notes

        silent = silent_hosts(desired, observed)
        planned = container_part(plan(view, observed, held, frozen=silent))
        return Preview(view, observed, held, with_silent_notes(planned, silent))

    # ----------------------------------------------------------------- records

    def record_decision(
        self, environment: str, status: str, summary: str, commit: str = "-"
    ) -> int:
        """An operator's decision (promote, abort, retry, rollback) as a run of its own."""
        store = self.require_store()
        run_id = store.start_run(environment, commit, "{}")
        store.finish_run(run_id, status, {}, summary)
        return run_id

    def save_canary(self, environment: str, service: str, state: CanaryState | None) -> None:
        text = None if state is None else state.to_json()
        self.require_store().save_canary(environment, service, text)

    def forget_failures(self, environment: str, service: str | None) -> tuple[int, list[str]]:
        """Forget the recorded failures of ``service`` (None: every service) at any commit
        and restart the analysis of its canaries; (failures forgotten, canaries restarted)."""
        store = self.require_store()
        n = store.clear_failure(environment, service)
        restarted = [svc for svc in store.canaries(environment) if service in (None, svc)]
        for svc in restarted:
            store.save_canary(environment, svc, None)
        return n, restarted

    # ----------------------------------------------------------------- apply

    def apply(
        self,
        desired: DesiredState,
        *,
        source: str,
        on_plan: Callable[[Plan], None] = lambda _: None,
        on_step: Callable[[StepResult], None] = lambda _: None,
        health_min_s: float = 30.0,
        should_stop: Callable[[], bool] = lambda: False,
        retention: Retention = DEFAULT_RETENTION,
        guard: Callable[[], None] = lambda: None,
    ) -> PassResult:
        """Observe, plan and execute one pass for ``desired``; record it in the history.

        Services whose apply failed at this commit are held (left as they run) until a
        newer commit or ``reconcile retry``. App hosts change in rollout batches (see
        ``batches``): each batch is observed, planned with the later batches' hosts
        frozen, and executed; a batch with a failure ends the rollout unless
        ``rollout.on_failure`` is continue (the failed batch's hosts then stay frozen on
        their old release). The outcome is verified against the desired state at the end
        (``settled_outcome``). An idle pass is folded into the previous idle run
        (``Store.finish_idle``), and the history of the environment is pruned to
        ``retention`` at the end. Raises ReconcilerError when live state cannot be read.

        ``guard`` is called before every effect on a host (image pulls, each step); when
        it raises ``FencedOut`` (etcd mode: no longer the leader) the pass takes no further
        step and ends as stopped (``result.fenced``), or, before its plan is recorded,
        raises it.

        Secrets are read within the session's policy. Every secret value the pass reads
        or finds in a failing container's environment is replaced by ``******`` in
        everything it records (steps, failures, summary) and returns or reports
        (``on_step``, the result, a ReconcilerError it raises).
        """
        if desired.coordination.etcd is None or desired.coordination.mode != "etcd":
            return self._pass(desired, source, on_plan, on_step, health_min_s, should_stop,
                              retention, guard)
        from reconciler.cluster.shared import shared_for

        shared = shared_for(desired, guard)
        try:
            env, store = desired.environment, self.require_store()
            shared.adopt(store, env, desired.commit)
            done = self._pass(desired, source, on_plan, on_step, health_min_s, should_stop,
                              retention, guard)
            if done.result.fenced is None:
                shared.share(store, env, desired.commit)
            return done
        finally:
            shared.client.close()

    def _pass(self, desired: DesiredState, source: str, on_plan: Callable[[Plan], None],
              on_step: Callable[[StepResult], None], health_min_s: float,
              should_stop: Callable[[], bool], retention: Retention,
              guard: Callable[[], None]) -> PassResult:
        """``apply`` without what etcd mode shares (``reconciler.cluster.shared``)."""
        if desired.coordination.agents:
            from reconciler.agent.leaderpass import agents_pass

            desired = self._judge_shared_canaries(desired, guard)
            return agents_pass(self.require_store(), desired, source=source, on_plan=on_plan,
                               on_step=on_step, health_min_s=health_min_s,
                               retention=retention, guard=guard, held=self.held(desired))
        redactor = Redactor()
        self._fresh_local()
        try:
            pass_ = PassRun(self, desired, redactor, health_min_s, should_stop, guard)
            done = pass_.run(source, on_plan, on_step, retention)
            if not done.result.ok:
                self.reset()  # a host may have gone away mid-pass: connect afresh next time
            return done
        except ReconcilerError as exc:
            self.reset()
            text = str(exc)
            if redactor.scrub(text) == text:
                raise
            raise ScrubbedError(redactor.scrub(text)) from None
