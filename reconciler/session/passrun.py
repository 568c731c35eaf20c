"""One pass of a session: judge canaries, plan, get images, execute in rollout batches,
verify the outcome, record the run.

Services whose apply failed at this commit are held (left as they run) until a newer
commit or ``reconcile retry``. App hosts change in rollout batches (``batches``): each
batch is observed, planned with the later batches' hosts frozen, and executed; a batch
with a failure ends the rollout unless ``rollout.on_failure`` is continue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import polling
from reconciler.apply.engines import DockerEngines
from reconciler.apply.images import ensure_image
from reconciler.apply.passresult import PassResult
from reconciler.apply.results import ApplyResult, StepResult
from reconciler.apply.steps import Executor
from reconciler.errors import ReconcilerError
from reconciler.model import DesiredState, ObservedState
from reconciler.observe.live import observe
from reconciler.plan.actions import PullImage
from reconciler.plan.batches import batches
from reconciler.plan.planner import Plan, plan
from reconciler.plan.pulls import plan_after_pulls
from reconciler.plan.verify import Mismatch, verify
from reconciler.present.output import plan_json
from reconciler.redact import Redactor
from reconciler.store import Retention
from reconciler.transport.pool import Connections

if TYPE_CHECKING:
    from reconciler.lb.port import LoadBalancerPort
    from reconciler.session.core import Session

log = logging.getLogger("reconciler.records")


def ensure_images(
    pulls: list[PullImage], conns: Connections, concurrency: int
) -> dict[tuple[str, str], str]:
    """Pull or copy the images of ``pulls``, hosts in parallel; (host, image) -> why it
    could not be had, for each that failed."""

    def one(a: PullImage) -> str | None:
        try:
            ensure_image(conns.hosts[a.host], conns.get(a.host).docker(), a.image)
        except ReconcilerError as exc:
            return str(exc)
        return None

    if not pulls:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        outcomes = list(pool.map(one, pulls))
    return {
        (a.host, a.image): why for a, why in zip(pulls, outcomes, strict=True) if why is not None
    }


class PassRun:
    """The work of one ``Session.apply``: its plan, batches, result and record."""

    def __init__(
        self,
        session: Session,
        desired: DesiredState,
        redactor: Redactor,
        health_min_s: float,
        should_stop: Callable[[], bool],
        guard: Callable[[], None] = lambda: None,
    ) -> None:
        self.s = session
        self.guard = guard  # before every effect on a host (Session.apply)
        self.store = session.require_store()
        self.desired = desired
        self.redactor = redactor
        self.health_min_s = health_min_s
        self.should_stop = should_stop
        self.held = session.held(desired)
        self.image_holds: dict[str, str] = {}  # services held for want of an image: why
        self.retired = session.retired(desired)
        self.conns = session.connections(desired, self.retired)
        self.result = ApplyResult()
        self.rolled: set[str] = set()
        self.failed_hosts: set[str] = set()
        self.changed_any = self.changed_last = False
        self.recording: threading.Thread | None = None  # request records being written
        self.observed = self.look()

    def look(self) -> ObservedState:
        return observe(self.desired, self.s.state_dir, self.s.external, self.conns, self.retired)

    def run(
        self,
        source: str,
        on_plan: Callable[[Plan], None],
        on_step: Callable[[StepResult], None],
        retention: Retention,
    ) -> PassResult:
        env = self.desired.environment
        self.desired = self.judge_canaries()
        current = self.first_plan()
        on_plan(current)
        run_id = self.store.start_run(env, self.desired.commit, plan_json(current, source))
        offset = 0

        def record(step: StepResult) -> None:
            step = replace(step, detail=self.redactor.scrub(step.detail))
            self.store.record_step(
                run_id, step.step, step.action.to_json(), step.status, step.detail, step.duration_s
            )
            on_step(step)

        groups = batches(self.desired, self.observed)
        for index, group in enumerate(groups):
            later = {h for g in groups[index + 1 :] for h in g}
            step_plan = current if len(groups) == 1 else self.batch_plan(index, later)
            if step_plan is None:
                self.result.stopped = True
                break
            done = self.run_batch(step_plan, group, record_at(record, offset))
            offset += len(step_plan.actions)
            if done.aborted or done.stopped:
                break
            if done.failures and not self.continue_after(index, groups):
                break
        self.result.failures = {**self.image_holds, **self.result.failures}
        if self.recording is not None:
            self.recording.join()
        self.verify()
        self.remember(current)
        return PassResult(current, self.result, self.finish(run_id, current, retention))

    def _rings(self, canaries: bool) -> dict[str, LoadBalancerPort]:
        """The LB hosts whose request log ring is read: when canaries need it or the
        session records requests (LBs whose ``request_records`` is off have none)."""
        wanted = {h for lb in self.desired.loadbalancers if lb.request_records for h in lb.hosts}
        if not wanted or not (canaries or self.s.record_requests):
            return {}
        return {h: lb for h, lb in self.s.lbs(self.desired).items() if h in wanted}

    def judge_canaries(self) -> DesiredState:
        """One look at every canary (``Session.judge_canaries``) with the LB hosts'
        request logs; the desired state with the weights that follow from it. The rings'
        new requests are recorded too (``record_dumps``); without canaries that is done
        beside the pass (``recording``, joined before its outcome check), not before its
        plan: ingesting a full ring takes tens of milliseconds."""
        canaries = self.s.has_canaries(self.desired)
        rings = self._rings(canaries)
        desired, observed, state_dir = self.desired, self.observed, self.s.state_dir
        record = self.s.record_requests
        if canaries:
            events = _read_rings(rings)
            if record:
                record_dumps(state_dir, desired, observed, events)
            return self.s.judge_canaries(desired, observed, events)
        if rings:
            self.recording = threading.Thread(
                target=lambda: record_dumps(state_dir, desired, observed, _read_rings(rings)),
                name="request-records",
                daemon=True,  # a pass that raises does not wait for it
            )
            self.recording.start()
        return desired

    def first_plan(self) -> Plan:
        """The pass's plan, once the images it needs are on their hosts (container names
        depend on image ids: a plan with pulls is made again after them). Services whose
        images could not be had are held for the pass (``image_holds``)."""
        current = plan(self.desired, self.observed, self.held)
        pulls = [a for a in current.actions if isinstance(a, PullImage)]
        if not pulls:
            return current
        self.guard()
        failed = ensure_images(pulls, self.conns, self.desired.rollout.concurrency)
        self.observed = self.look()
        return self._without_pulls(failed)

    def _without_pulls(
        self, failed: Mapping[tuple[str, str], str], frozen: Collection[str] = ()
    ) -> Plan:
        current, holds = plan_after_pulls(self.desired, self.observed, self.held, failed, frozen)
        self.held = {**self.held, **holds}
        self.image_holds.update(holds)
        return current

    def batch_plan(self, index: int, later: set[str]) -> Plan | None:
        """The plan of batch ``index`` after the pause between batches (None: asked to
        stop meanwhile), with the later batches' and failed batches' hosts frozen. (An
        image gone since the pass pulled it holds its service: ``plan_after_pulls``.)"""
        if index > 0:
            pause = self.desired.rollout.wait_ms / 1000 if self.changed_last else 0
            if pause and not _pause(pause, self.should_stop):
                return None
            self.observed = self.look()
        return self._without_pulls({}, frozen=later | self.failed_hosts)

    def run_batch(
        self, step_plan: Plan, group: list[str], record: Callable[[StepResult], None]
    ) -> ApplyResult:
        """Execute one batch's plan; its result, also added to the pass's."""
        engines = DockerEngines(
            self.conns, self.s.policy.secret_rules(self.desired.environment), self.redactor
        )
        executor = Executor(
            self.desired,
            self.observed,
            engines,
            self.s.lbs(self.desired),
            on_step=record,
            health_min_s=self.health_min_s,
            should_stop=self.should_stop,
            concurrency=self.desired.rollout.concurrency,
            guard=self.guard,
        )
        done = executor.run(step_plan)
        self.rolled |= set(group)
        self.changed_last = not step_plan.empty
        self.changed_any |= self.changed_last
        res = self.result
        res.steps += done.steps
        res.reloads += done.reloads
        for service, why in done.failures.items():
            res.failures.setdefault(service, why)
        res.aborted |= done.aborted
        res.stopped |= done.stopped
        res.fenced = res.fenced or done.fenced
        res.notes += done.notes
        if done.failures:
            self.failed_hosts |= set(group)
        return done

    def continue_after(self, index: int, groups: list[list[str]]) -> bool:
        """After a batch with a failure: go on unless ``rollout.on_failure`` is stop
        (then say which hosts were not rolled)."""
        if self.desired.rollout.on_failure != "stop" or index + 1 >= len(groups):
            return True
        rest = ", ".join(h for g in groups[index + 1 :] for h in g)
        self.result.notes.append(
            f"rollout stopped after batch {index + 1}/{len(groups)} "
            f"({', '.join(groups[index])}) failed; not rolled: {rest}"
        )
        return False

    def verify(self) -> None:
        """Compare the world with the desired state (``settled_outcome``) unless the pass
        was stopped or aborted; scrub what the result holds."""
        res, scrub = self.result, self.redactor.scrub
        res.failures = {k: scrub(v) for k, v in res.failures.items()}
        res.steps = [replace(st, detail=scrub(st.detail)) for st in res.steps]
        if res.stopped or res.aborted:
            return
        found = settled_outcome(
            self.desired,
            self.look if self.changed_any else lambda: self.observed,
            skip=set(self.held) | set(res.failures),
            frozen=(self.desired.app_host_names - self.rolled) | self.failed_hosts,
            settle_s=min(self.health_min_s, SETTLE_S) if self.changed_any else 0.0,
        )
        res.mismatches = [scrub(str(m)) for m in found]

    def remember(self, current: Plan) -> None:
        """Record the failed services and, after a good pass, the app hosts in use
        (retired hosts that could not be reached stay remembered for a later pass)."""
        env, res = self.desired.environment, self.result
        for service, why in res.failures.items():
            if service != "haproxy":
                self.store.record_failure(env, self.desired.commit, service, why)
        if res.ok and not res.stopped:
            seen = {h.name for h in self.observed.hosts}
            unreached = [h for h in self.retired if h.name not in seen]
            now = sorted(self.desired.app_host_names)
            self.store.set_app_hosts(env, [*(self.desired.host(h) for h in now), *unreached])

    def finish(self, run_id: int, current: Plan, retention: Retention) -> int:
        """Close the run in the history (an idle look folds into the previous one) and
        prune the history; the run's id."""
        res = self.result
        failures = dict(res.failures)
        if res.mismatches:
            failures["outcome"] = "; ".join(res.mismatches)
        status = (
            "failed"
            if not res.ok
            else "stopped"
            if res.stopped
            else "nothing-to-do"
            if current.empty
            else "ok"
        )
        ok_steps = sum(s.status == "ok" for s in res.steps)
        summary = self.redactor.scrub(
            f"{ok_steps}/{len(res.steps)} steps ok"
            + "".join(f"; {k} failed" for k in res.failures)
            + (f"; outcome differs ({len(res.mismatches)})" if res.mismatches else "")
            + "".join(f"; {n}" for n in res.notes)
        )
        if status == "nothing-to-do" and not res.steps:
            run_id = self.store.finish_idle(run_id, summary)
        else:
            self.store.finish_run(run_id, status, failures, summary)
        self.store.prune(self.desired.environment, retention)
        return run_id


def _read_rings(rings: Mapping[str, LoadBalancerPort]) -> dict[str, str]:
    """LB host -> its request log ring's text (an HAProxy not running yet has none)."""
    events: dict[str, str] = {}
    for host, lb in rings.items():
        try:
            events[host] = lb.request_events()
        except ReconcilerError:
            continue  # not running yet: no response times this time
    return events


def record_dumps(
    state_dir: Path, desired: DesiredState, observed: ObservedState, events: Mapping[str, str]
) -> None:
    """Record the new requests of each LB host's ring dump in the records database
    (``<state_dir>/requests.db``); a database that cannot be written is logged, never
    fails the pass."""
    if not events:
        return
    from reconciler.records.aggregate import action_tables, origins
    from reconciler.records.oneshot import ingest_dump
    from reconciler.records.store import FILENAME, RecordsStore

    try:
        store = RecordsStore(state_dir / FILENAME)
    except ReconcilerError as exc:
        log.warning("request records not written: %s", exc)
        return
    try:
        where, tables = origins(observed, desired), action_tables(desired, {})
        for host, text in events.items():
            ingest_dump(store, host, text, where, tables)
    except ReconcilerError as exc:
        log.warning("request records not written: %s", exc)
    finally:
        store.close()


def record_at(record: Callable[[StepResult], None], offset: int) -> Callable[[StepResult], None]:
    """``record`` for a batch whose steps are numbered after ``offset`` earlier ones."""
    return lambda step: record(replace(step, step=step.step + offset))


SETTLE_S = 10.0
"""How long a pass that changed something waits for HAProxy's checks to agree with it
before a difference counts (a server added a moment ago may need a check or two)."""


def settled_outcome(
    desired: DesiredState,
    look: Callable[[], ObservedState],
    skip: Collection[str],
    frozen: Collection[str],
    settle_s: float,
) -> tuple[Mismatch, ...]:
    """``verify`` the world as ``look`` reads it, again (0.05 s later, backing off to
    every half second) for up to ``settle_s`` while it differs; the last differences
    (none: the outcome holds)."""
    deadline = time.monotonic() + settle_s
    sleeps = polling.intervals(first=0.05, cap=0.5)
    while True:
        found = verify(desired, look(), skip, frozen)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(next(sleeps))


def _pause(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep between batches; False when asked to stop meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if should_stop():
            return False
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    return True
