"""A pass of ``reconcile apply``/``watch`` for an environment whose hosts run agents
(Inventory: ``mode: etcd`` with ``etcd.agents: true``): the leader's etcd pass
(``reconciler.agent.drive``), recorded in the history like any pass.

The plan is the containers' part of the planner's (pulls, starts, removals); each step
is recorded as ``ok`` once the agents reported it done, ``failed`` for a service that
failed (with the agent's reason), ``skipped`` for the rest of that service. A pass
whose fence lapsed ends ``stopped`` (``fenced``), nothing torn down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from reconciler.agent.drive import EtcdDrive
from reconciler.apply.passresult import PassResult
from reconciler.apply.results import ApplyResult, Status, StepResult
from reconciler.cluster.etcd import Etcd, Op
from reconciler.cluster.keys import Keys
from reconciler.cluster.publish import Fence, NoFence, lb_reports
from reconciler.errors import FencedOut
from reconciler.model import DesiredState, ObservedLB, ObservedState
from reconciler.plan.planner import Plan
from reconciler.present.output import plan_json
from reconciler.store import Retention, Store


def uses_agents(desired: DesiredState) -> bool:
    """Whether ``desired``'s hosts are driven through their agents."""
    return desired.coordination.agents


def drive_for(desired: DesiredState, fence: Fence, health_min_s: float = 30.0) -> EtcdDrive:
    settings = desired.coordination.etcd
    assert settings is not None
    client = Etcd(settings, timeout_s=min(2.0, settings.lease_ttl / 4))
    keys = Keys(desired.instance.name, desired.environment)
    return EtcdDrive(client, keys, fence, health_timeout_s=health_min_s)


def observe_reports(desired: DesiredState) -> ObservedState:
    """What runs, as the app agents report it (``plan``, ``status``)."""
    drive = drive_for(desired, NoFence())
    try:
        return drive.observe()
    finally:
        drive.client.close()


def observe_canaries(drive: EtcdDrive) -> ObservedState:
    """What runs, as the app agents report it, with each LB agent's last reported
    server counters (what the canary analysis reads; not for planning: a server DOWN
    there would count as an unhealthy container)."""
    lbs = lb_reports(drive.client, drive.keys)
    return replace(drive.observe(), lbs=tuple(
        ObservedLB(host, running=True, stats=r.stats, worker_pid=r.worker_pid)
        for host, r in sorted(lbs.items())))


def shared_canaries(drive: EtcdDrive) -> dict[str, str]:
    """Service -> the JSON state of its canary analysis as the leaders keep it in etcd
    (``canary/<service>``), so that a replica that takes over goes on from it."""
    n = len(drive.keys.canaries)
    found = drive.client.range(drive.keys.canaries, prefix=True)
    return {kv.key[n:]: kv.value.decode() for kv in found.kvs}


def share_canaries(drive: EtcdDrive, states: Mapping[str, str]) -> None:
    """Make ``canary/`` say ``states`` (service -> JSON state) in one transaction fenced
    by the drive's fence (a replica that lost the lead writes nothing: FencedOut)."""
    keys, client = drive.keys, drive.client
    have = {kv.key: kv.value for kv in client.range(keys.canaries, prefix=True).kvs}
    want = {keys.canary(svc): text.encode() for svc, text in states.items()}
    ops = [Op("put", k, v) for k, v in sorted(want.items()) if have.get(k) != v]
    ops += [Op("delete", k) for k in sorted(set(have) - set(want))]
    if ops and not client.txn(list(drive.fence.compares()), ops).succeeded:
        raise FencedOut(f"not the leader of {keys.prefix} any more: canaries not shared")


def agents_pass(store: Store, desired: DesiredState, *, source: str,
                on_plan: Callable[[Plan], None], on_step: Callable[[StepResult], None],
                health_min_s: float, retention: Retention, guard: Callable[[], None],
                held: Mapping[str, str]) -> PassResult:
    """One pass through the agents, recorded in ``store`` (see the module); a service
    that fails is held at this commit (``held``: those held already)."""
    fence = guard if isinstance(guard, Fence) else NoFence()
    guard()
    drive = drive_for(desired, fence, health_min_s)
    result = ApplyResult()
    run: list[int] = []

    def planned(p: Plan) -> None:
        on_plan(p)
        run.append(store.start_run(desired.environment, desired.commit, plan_json(p, source)))

    t0 = time.monotonic()
    try:
        done = drive.run(desired, planned, held)
        current, result.failures = done.plan, dict(done.failures)
        result.failures.update({f"host {h}": why for h, why in done.hosts.items()})
        result.notes += done.notes
    except FencedOut as exc:
        if not run:
            raise
        current = Plan(desired.environment, desired.commit, ())
        result.stopped, result.fenced = True, str(exc)
        result.notes.append(f"fenced out: {exc}")
    finally:
        drive.client.close()
    services = {s.name for s in desired.services}
    for service, why in result.failures.items():
        if service in services:  # not "-" (timed out) nor a host: those are not held
            store.record_failure(desired.environment, desired.commit, service, why)
    for i, action in enumerate(current.actions, 1):
        status: Status = "ok"
        detail = "reported done by the host's agent"
        if action.service in result.failures:
            status, detail = "failed", result.failures[action.service or ""]
        elif result.stopped:
            status, detail = "skipped", "fenced out"
        step = StepResult(i, action, status, detail, time.monotonic() - t0)
        store.record_step(run[0], i, action.to_json(), status, detail, step.duration_s)
        result.steps.append(step)
        on_step(step)
    status_ = ("failed" if result.failures else "stopped" if result.stopped
               else "nothing-to-do" if current.empty else "ok")
    summary = f"{sum(s.status == 'ok' for s in result.steps)}/{len(result.steps)} steps ok " \
              "(through the agents)" + "".join(f"; {k} failed" for k in result.failures) \
              + "".join(f"; {n}" for n in result.notes)
    if status_ == "nothing-to-do":
        run_id = store.finish_idle(run[0], summary)
    else:
        run_id = run[0]
        store.finish_run(run_id, status_, result.failures, summary)
    store.prune(desired.environment, retention)
    return PassResult(current, result, run_id)
