"""What a watch pass tells: its metrics and log lines."""

from __future__ import annotations

import logging

from reconciler import identity
from reconciler.apply.passresult import PassResult
from reconciler.canary.engine import CanaryState, effective_weights
from reconciler.canary.pair import canary_pair
from reconciler.model import DesiredState, ObservedState
from reconciler.present.metrics import Metrics

log = logging.getLogger("reconciler.watch")


def report_pass(metrics: Metrics, done: PassResult, sha: str, kind: str) -> None:
    """Metrics and log lines of a pass: outcome, reloads, drift, failures."""
    res = done.result
    metrics.reloads.inc(res.reloads)
    outcome = "stopped" if res.stopped else "ok" if res.ok else "failed"
    metrics.passes.labels(outcome=outcome).inc()
    if kind == "drift" and not done.plan.empty:
        metrics.drift.inc()
    metrics.mismatches.set(len(res.mismatches))
    if res.mismatches:
        metrics.failures.labels(kind="outcome").inc()
        log.error(
            "the outcome at commit %s differs from the plan: %s",
            sha[:7],
            "; ".join(res.mismatches),
            extra={"event": "outcome-differs", "commit": sha, "mismatches": res.mismatches},
        )
    for service in res.failures:
        metrics.failures.labels(kind="apply").inc()
        log.error(
            "%s failed at commit %s",
            service,
            sha[:7],
            extra={"event": "apply-failed", "commit": sha, "service": service},
        )
    if res.ok and not res.stopped:
        metrics.set_applied(sha)
    metrics.drift_pending.set(0)
    if not done.plan.empty:
        log.info(
            "pass %s at commit %s: %d step(s), %s",
            done.run_id,
            sha[:7],
            len(res.steps),
            outcome,
            extra={
                "event": "pass",
                "commit": sha,
                "run": done.run_id,
                "reason": kind,
                "outcome": outcome,
            },
        )


def set_release_weights(metrics: Metrics, desired: DesiredState) -> None:
    """The weight of every release as git gives it."""
    metrics.release_weight.clear()
    for svc in desired.services:
        for rel in svc.releases:
            metrics.release_weight.labels(service=svc.name, revision=rel.revision).set(rel.weight)


def set_healthy(metrics: Metrics, desired: DesiredState, observed: ObservedState) -> None:
    """How many containers of each service run and are not unhealthy."""
    for svc in desired.services:
        healthy = sum(
            1
            for h in svc.hosts
            for c in observed.host(h).containers
            if c.label(identity.ENVIRONMENT) == desired.environment
            and c.label(identity.SERVICE) == svc.name
            and c.status == "running"
            and c.health != "unhealthy"
        )
        metrics.healthy.labels(service=svc.name).set(healthy)


def set_canaries(metrics: Metrics, desired: DesiredState, states: dict[str, CanaryState]) -> None:
    """Each canary's status, step, evidence and weights now (a service without a canary,
    or whose canary has not started, has none)."""
    for gauge in (metrics.canary_info, metrics.canary_step, metrics.canary_evidence):
        gauge.clear()
    metrics.canary_weight.clear()
    for svc in desired.services:
        state = states.get(svc.name)
        if state is None or canary_pair(svc) is None:
            continue
        metrics.canary_info.labels(svc.name, state.baseline, state.canary, state.status).set(1)
        metrics.canary_step.labels(svc.name).set(int(state.progress.get("step", 0)) + 1)
        metrics.canary_evidence.labels(svc.name).set(state.evidence)
        weights = effective_weights(svc, state) or {r.revision: r.weight for r in svc.releases}
        for revision, weight in weights.items():
            metrics.canary_weight.labels(svc.name, revision).set(weight)
