"""One reconcile pass: lock, observe, plan, execute, record.

Two reconcilers never interleave on one target: each pass holds an exclusive lock on
``<state dir>/<environment>.lock`` (a second one waits up to ``lock_timeout`` seconds,
then exits with a message naming the holder's pid).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler import statedir
from reconciler.apply.executor import ApplyResult, Executor, StepResult
from reconciler.apply.images import ensure_image
from reconciler.canary.engine import CanaryState, canary_pair, evaluate, overlay
from reconciler.desired.policy import Policy
from reconciler.errors import ReconcilerError
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.lb.haproxy.requestlog import RING
from reconciler.model import DesiredState, Host, ObservedState
from reconciler.observe.live import lb_paths, observe
from reconciler.plan.actions import PullImage
from reconciler.plan.planner import Plan, plan
from reconciler.plan.verify import Mismatch, verify
from reconciler.present.output import plan_json
from reconciler.redact import Redactor
from reconciler.store import Retention, Store
from reconciler.transport.pool import Connections

DEFAULT_RETENTION = Retention()


class LockTimeout(ReconcilerError):
    pass


@contextlib.contextmanager
def target_lock(state_dir: Path, environment: str, timeout: float) -> Iterator[None]:
    """Exclusive lock of one environment's target; released on exit (and by the kernel
    when the process dies, so a kill -9 never leaves a stale lock)."""
    path = statedir.private_file(state_dir / f"{environment}.lock")
    with open(path, "r+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.seek(0)
                    holder = f.read().strip() or "unknown"
                    raise LockTimeout(
                        f"another reconciler (pid {holder}) is working on "
                        f"environment {environment!r}; waited {timeout:.0f}s "
                        f"for {path}"
                    ) from None
                time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class PassResult:
    plan: Plan
    result: ApplyResult
    run_id: int


def haproxies(
    desired: DesiredState, state_dir: Path, external: HAProxyPaths | None, conns: Connections
) -> dict[str, HAProxy]:
    """The HAProxy controller of each LB host, on that host's transport."""
    return {
        h: HAProxy(lb_paths(desired, state_dir, external, desired.host(h)), transport=conns.get(h))
        for lb in desired.loadbalancers
        for h in lb.hosts
    }


def batches(desired: DesiredState, observed: ObservedState) -> list[list[str]]:
    """App hosts in rollout batches: ``rollout.limit`` at a time in inventory order
    (sorted names); hosts being retired come last, in a batch of their own."""
    apps = sorted(desired.app_host_names)
    limit = desired.rollout.limit or max(1, len(apps))
    out = [apps[i : i + limit] for i in range(0, len(apps), limit)] or [[]]
    retired = sorted({h.name for h in observed.hosts} - set(apps))
    if retired:
        out.append(retired)
    return out


def ensure_images(plan_: Plan, conns: Connections, concurrency: int) -> dict[str, str]:
    """Pull or copy every image the plan needs, hosts in parallel; service -> why failed."""
    pulls = [a for a in plan_.actions if isinstance(a, PullImage)]

    def one(a: PullImage) -> tuple[str, str | None]:
        try:
            ensure_image(conns.hosts[a.host], conns.get(a.host).docker(), a.image)
        except ReconcilerError as exc:
            return a.service or "", str(exc)
        return a.service or "", None

    if not pulls:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        outcomes = list(pool.map(one, pulls))
    failures: dict[str, str] = {}
    for service, why in outcomes:
        if why is not None:
            failures.setdefault(service, why)
    return failures


def stored_canaries(store: Store, environment: str) -> dict[str, CanaryState]:
    return {svc: CanaryState.from_json(t) for svc, t in store.canaries(environment).items()}


def with_canaries(desired: DesiredState, store: Store | None) -> DesiredState:
    """``desired`` with the weights of its canaries' current steps, as the last pass
    left them (for plans and drift checks, which judge nothing)."""
    if store is None or not any(canary_pair(s) for s in desired.services):
        return desired
    return overlay(desired, stored_canaries(store, desired.environment))


def judge_canaries(
    desired: DesiredState, observed: ObservedState, store: Store, lbs: Mapping[str, HAProxy]
) -> DesiredState:
    """One look at every canary (reconciler.canary.engine.evaluate), stored; the desired
    state with the weights that follow from it."""
    env = desired.environment
    before = stored_canaries(store, env)
    if not before and not any(canary_pair(s) for s in desired.services):
        return desired
    events: dict[str, str] = {}
    for host, lb in lbs.items():
        try:
            events[host] = lb.stats.command(f"show events {RING}")
        except ReconcilerError:
            continue  # not running yet: no response times this time
    after = evaluate(desired, observed, before, time.time(), events)
    for service in before.keys() - after.keys():
        store.save_canary(env, service, None)
    for service, state in after.items():
        store.save_canary(env, service, state.to_json())
    return overlay(desired, after)


def retired_hosts(desired: DesiredState, store: Store) -> list[Host]:
    """App hosts the environment used in an earlier pass and does not use now."""
    now = desired.app_host_names
    return [h for h in store.app_hosts(desired.environment) if h.name not in now]


def apply_pass(
    desired: DesiredState,
    state_dir: Path,
    *,
    source: str,
    on_plan: Callable[[Plan], None] = lambda _: None,
    on_step: Callable[[StepResult], None] = lambda _: None,
    health_min_s: float = 30.0,
    external: HAProxyPaths | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    retention: Retention = DEFAULT_RETENTION,
    policy: Policy | None = None,
) -> PassResult:
    """Observe, plan and execute one pass for ``desired``; record it in the history.

    Services whose apply failed at this commit are held (left as they run) until a newer
    commit or ``reconcile retry``. App hosts change in rollout batches (see ``batches``):
    each batch is observed, planned with the later batches' hosts frozen, and executed;
    a batch with a failure ends the rollout unless ``rollout.on_failure`` is continue
    (the failed batch's hosts then stay frozen on their old release). An idle pass is
    folded into the previous idle run (``Store.finish_idle``), and the history of the
    environment is pruned to ``retention`` at the end. Raises ReconcilerError when live
    state cannot be read.

    Secrets are read within the operator's ``policy`` (default: ``Policy()``). Every
    secret value the pass reads or finds in a failing container's environment is
    replaced by ``******`` in everything it records (steps, failures, summary) and
    returns or reports (``on_step``, the result, a ReconcilerError it raises).
    """
    redactor = Redactor()
    try:
        return _apply_pass(
            desired,
            state_dir,
            source=source,
            on_plan=on_plan,
            on_step=on_step,
            health_min_s=health_min_s,
            external=external,
            should_stop=should_stop,
            retention=retention,
            policy=policy or Policy(),
            redactor=redactor,
        )
    except ReconcilerError as exc:
        text = str(exc)
        if redactor.scrub(text) == text:
            raise
        raise ScrubbedError(redactor.scrub(text)) from None


class ScrubbedError(ReconcilerError):
    """An error whose message held a secret value, with the value blanked out."""


def _apply_pass(
    desired: DesiredState,
    state_dir: Path,
    *,
    source: str,
    on_plan: Callable[[Plan], None],
    on_step: Callable[[StepResult], None],
    health_min_s: float,
    external: HAProxyPaths | None,
    should_stop: Callable[[], bool],
    retention: Retention,
    policy: Policy,
    redactor: Redactor,
) -> PassResult:
    scrub = redactor.scrub
    env = desired.environment
    rollout = desired.rollout
    store = Store(state_dir / "history.sqlite")
    conns = Connections(desired.hosts)
    try:
        held = store.failed_services(env, desired.commit)
        now = desired.app_host_names
        retired = retired_hosts(desired, store)

        def look() -> ObservedState:
            return observe(desired, state_dir, external, conns, retired)

        observed = look()
        desired = judge_canaries(
            desired, observed, store, haproxies(desired, state_dir, external, conns)
        )
        current = plan(desired, observed, held)
        pull_failures = ensure_images(current, conns, rollout.concurrency)
        if any(isinstance(a, PullImage) for a in current.actions):
            # Container names depend on the image ids: plan again once they are there.
            held = {**held, **pull_failures}
            observed = look()
            current = plan(desired, observed, held)
        on_plan(current)
        run_id = store.start_run(env, desired.commit, plan_json(current, source))
        result = ApplyResult()
        offset = 0

        def record(step: StepResult) -> None:
            step = replace(step, step=step.step + offset, detail=scrub(step.detail))
            store.record_step(
                run_id, step.step, step.action.to_json(), step.status, step.detail, step.duration_s
            )
            on_step(step)

        groups = batches(desired, observed)
        failed_hosts: set[str] = set()
        rolled: set[str] = set()
        changed = changed_any = False
        for index, group in enumerate(groups):
            later = {h for g in groups[index + 1 :] for h in g}
            if index > 0:
                pause = rollout.wait_ms / 1000 if changed else 0  # not after an idle batch
                if pause and not _pause(pause, should_stop):
                    result.stopped = True
                    break
                observed = look()
            step_plan = (
                current
                if len(groups) == 1
                else plan(desired, observed, held, frozen=later | failed_hosts)
            )
            executor = Executor(
                desired,
                observed,
                conns,
                haproxies(desired, state_dir, external, conns),
                on_step=record,
                health_min_s=health_min_s,
                should_stop=should_stop,
                concurrency=rollout.concurrency,
                secret_rules=policy.secret_rules(env),
                redactor=redactor,
            )
            done = executor.run(step_plan)
            rolled |= set(group)
            changed = not step_plan.empty
            changed_any |= changed
            offset += len(step_plan.actions)
            result.steps += done.steps
            for service, why in done.failures.items():
                result.failures.setdefault(service, why)
            result.aborted |= done.aborted
            result.stopped |= done.stopped
            if done.aborted or done.stopped:
                break
            if done.failures:
                failed_hosts |= set(group)
                if rollout.on_failure == "stop" and index + 1 < len(groups):
                    rest = ", ".join(h for g in groups[index + 1 :] for h in g)
                    result.notes.append(
                        f"rollout stopped after batch {index + 1}/{len(groups)} "
                        f"({', '.join(group)}) failed; not rolled: {rest}"
                    )
                    break
        result.failures = {k: scrub(v) for k, v in {**pull_failures, **result.failures}.items()}
        result.steps = [replace(st, detail=scrub(st.detail)) for st in result.steps]
        if not result.stopped and not result.aborted:
            result.mismatches = [
                scrub(str(m))
                for m in settled_outcome(
                    desired,
                    look if changed_any else lambda: observed,
                    skip=set(held) | set(result.failures),
                    frozen=(desired.app_host_names - rolled) | failed_hosts,
                    settle_s=min(health_min_s, SETTLE_S) if changed_any else 0.0,
                )
            ]
        for service, why in result.failures.items():
            if service != "haproxy":
                store.record_failure(env, desired.commit, service, why)
        if result.ok and not result.stopped:
            # Retired hosts that could not be reached stay remembered for a later pass.
            seen = {h.name for h in observed.hosts}
            unreached = [h for h in retired if h.name not in seen]
            store.set_app_hosts(env, [*(desired.host(h) for h in sorted(now)), *unreached])
        failures = dict(result.failures)
        if result.mismatches:
            failures["outcome"] = "; ".join(result.mismatches)
        status = (
            "failed"
            if not result.ok
            else "stopped"
            if result.stopped
            else "nothing-to-do"
            if current.empty
            else "ok"
        )
        ok_steps = sum(s.status == "ok" for s in result.steps)
        summary = (
            f"{ok_steps}/{len(result.steps)} steps ok"
            + "".join(f"; {k} failed" for k in result.failures)
            + (f"; outcome differs ({len(result.mismatches)})" if result.mismatches else "")
            + "".join(f"; {n}" for n in result.notes)
        )
        summary = scrub(summary)
        if status == "nothing-to-do" and not result.steps:
            # An idle look: folded into the previous one when nothing differs from it.
            run_id = store.finish_idle(run_id, summary)
        else:
            store.finish_run(run_id, status, failures, summary)
        store.prune(env, retention)
        return PassResult(current, result, run_id)
    finally:
        conns.close()
        store.close()


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
    """``verify`` the world as ``look`` reads it, again every half second for up to
    ``settle_s`` while it differs; the last differences (none: the outcome holds)."""
    deadline = time.monotonic() + settle_s
    while True:
        found = verify(desired, look(), skip, frozen)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def _pause(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep between batches; False when asked to stop meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if should_stop():
            return False
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    return True
