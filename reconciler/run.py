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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler.actions import PullImage
from reconciler.apply import ApplyResult, Executor, StepResult
from reconciler.errors import ReconcilerError
from reconciler.haproxy.control import HAProxy
from reconciler.haproxy.paths import HAProxyPaths
from reconciler.model import DesiredState
from reconciler.observe.docker import local_client
from reconciler.observe.live import lb_paths, observe
from reconciler.output import plan_json
from reconciler.plan import Plan, plan
from reconciler.store import Store


class LockTimeout(ReconcilerError):
    pass


@contextlib.contextmanager
def target_lock(state_dir: Path, environment: str, timeout: float) -> Iterator[None]:
    """Exclusive lock of one environment's target; released on exit (and by the kernel
    when the process dies, so a kill -9 never leaves a stale lock)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"{environment}.lock"
    with open(path, "a+") as f:
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


def haproxies(desired: DesiredState, paths: HAProxyPaths) -> dict[str, HAProxy]:
    return {h: HAProxy(paths) for lb in desired.loadbalancers for h in lb.hosts}


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
) -> PassResult:
    """Observe, plan and execute one pass for ``desired``; record it in the history.

    Services whose apply failed at this commit are held (left as they run) until a newer
    commit or ``reconcile retry``. Raises ReconcilerError when live state cannot be read.
    """
    env = desired.environment
    store = Store(state_dir / "history.sqlite")
    client = local_client()
    try:
        held = store.failed_services(env, desired.commit)
        observed = observe(desired, state_dir, external)
        current = plan(desired, observed, held)
        pulls = [a for a in current.actions if isinstance(a, PullImage)]
        pull_failures: dict[str, str] = {}
        if pulls:
            # Pull first, then plan again: container names depend on the resolved image ids.
            for action in pulls:
                try:
                    client.images.pull(action.image)
                except Exception as exc:  # docker raises many kinds of errors here
                    pull_failures[action.service or ""] = f"cannot pull {action.image}: {exc}"
            held = {**held, **pull_failures}
            observed = observe(desired, state_dir, external)
            current = plan(desired, observed, held)
        on_plan(current)
        run_id = store.start_run(env, desired.commit, plan_json(current, source))
        executor = Executor(
            desired,
            observed,
            client,
            haproxies(desired, lb_paths(desired, state_dir, external)),
            on_step=on_step,
            health_min_s=health_min_s,
            should_stop=should_stop,
        )

        def record(step: StepResult) -> None:
            store.record_step(
                run_id, step.step, step.action.to_json(), step.status, step.detail, step.duration_s
            )
            on_step(step)

        executor.on_step = record
        result = executor.run(current)
        result.failures = {**pull_failures, **result.failures}
        for service, why in result.failures.items():
            if service != "haproxy":
                store.record_failure(env, desired.commit, service, why)
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
        store.finish_run(
            run_id,
            status,
            result.failures,
            f"{ok_steps}/{len(current.actions)} steps ok"
            + "".join(f"; {k} failed" for k in result.failures),
        )
        return PassResult(current, result, run_id)
    finally:
        client.close()
        store.close()
