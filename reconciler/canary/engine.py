"""Canaries across passes: their state, one evaluation per pass, and the weights the
planner then sees.

Git declares the canary (a release with ``canary:`` at weight 0 beside a baseline at
100, which is also where traffic goes back on abort). The reconciler keeps how far each
canary got in its history database and, in every pass, before planning:

1. ``evaluate``: once the canary's servers are in HAProxy, reads the per-revision
   increments of requests and errors (``Meter``) and of response times (the request
   log ring), feeds them to the decision rule and moves the state: progressing ->
   next step, promoted, aborted or paused. Pure: the caller reads HAProxy and stores.
2. ``overlay``: the desired state with the weights of each canary's current step
   (aborted: the declared weights; promoted: all traffic to the canary). The planner
   turns a weight change into runtime API calls, no reload; nothing is written to git.

A canary whose release changes (another revision, another config) starts afresh.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler import identity
from reconciler.canary.decision import Analysis, Counts, Progress, Step
from reconciler.canary.measure import Meter
from reconciler.lb.haproxy.requestlog import LogCursor, parse_events, percentile
from reconciler.model import DesiredState, ObservedState, Release, Service

MAX_TIMES = 5000  # response times kept per revision for the percentiles


def canary_pair(svc: Service) -> tuple[Release, Release] | None:
    """(baseline, canary) of a service with a canary release; None otherwise."""
    canaries = [r for r in svc.releases if r.canary]
    others = [r for r in svc.releases if not r.canary]
    if len(canaries) != 1 or len(others) != 1:
        return None
    return others[0], canaries[0]


def _key(env: str, svc: Service, baseline: Release, canary: Release) -> str:
    """Identity of one canary: its revisions and what defines its containers."""
    return ":".join(
        (
            baseline.revision,
            canary.revision,
            identity.config_hash(env, svc.name, canary.revision, canary.spec, ""),
        )
    )


@dataclass
class CanaryState:
    service: str
    key: str
    baseline: str
    canary: str
    status: str = "progressing"  # progressing | paused | aborted | promoted
    reason: str = "analysis started"
    updated_at: float = 0.0
    progress: dict[str, Any] = field(default_factory=dict)
    meter: Meter = field(default_factory=Meter)
    cursor: LogCursor = field(default_factory=LogCursor)
    times: dict[str, list[int]] = field(default_factory=dict)  # revision -> ms
    totals: dict[str, list[int]] = field(default_factory=dict)  # revision -> [req, err]
    history: list[str] = field(default_factory=list)  # what happened, newest last

    @property
    def evidence(self) -> float:
        return float(self.progress.get("evidence", 1.0))

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k not in ("meter", "cursor")}
        data["meter"] = json.loads(self.meter.to_json())
        data["cursor"] = {str(k): v for k, v in self.cursor.seen.items()}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CanaryState:
        data = json.loads(text)
        meter = Meter.from_json(json.dumps(data.pop("meter")))
        cursor = LogCursor({int(k): int(v) for k, v in data.pop("cursor").items()})
        return cls(**data, meter=meter, cursor=cursor)

    def summary(self, revision: str) -> dict[str, Any]:
        """Requests, errors and response-time percentiles of one side, for status."""
        req, err = self.totals.get(revision, [0, 0])
        times = self.times.get(revision, [])
        return {
            "requests": req,
            "errors": err,
            "error_rate": err / req if req else None,
            "p50_ms": percentile(times, 0.50),
            "p95_ms": percentile(times, 0.95),
            "p99_ms": percentile(times, 0.99),
        }


def undecided(env: str, svc: Service, state: CanaryState | None) -> bool:
    """True while ``svc`` has a canary that still needs looks: its analysis has not
    started (no state, or the state of an earlier canary: its servers are not in HAProxy
    yet, or were just added) or is under way (progressing, paused). False without a
    canary, and once this canary is aborted or promoted."""
    pair = canary_pair(svc)
    if pair is None:
        return False
    if state is None or state.key != _key(env, svc, *pair):
        return True
    return state.status in ("progressing", "paused")


def _steps(rel: Release) -> tuple[Step, ...]:
    assert rel.canary is not None
    return tuple(Step(s.weight, s.min_duration_ms / 1000, s.min_requests) for s in rel.canary.steps)


def _analysis(rel: Release) -> Analysis:
    assert rel.canary is not None
    return Analysis(confidence=rel.canary.confidence, max_error_rate=rel.canary.max_error_rate)


def evaluate(
    desired: DesiredState,
    observed: ObservedState,
    states: Mapping[str, CanaryState],
    now: float,
    events: Mapping[str, str],
) -> dict[str, CanaryState]:
    """The canaries' states after one look at HAProxy (``events``: LB host -> text of
    ``show events`` of the request log ring). States of services that no longer have a
    canary are dropped. Pure: ``states`` and everything in them are left as they are
    (a state that moves on is a copy), so a caller may still compare before and after."""
    env = desired.environment
    revision_of = _revisions(observed, env)
    out: dict[str, CanaryState] = {}
    for svc in desired.services:
        pair = canary_pair(svc)
        if pair is None:
            continue
        baseline, canary = pair
        key = _key(env, svc, baseline, canary)
        backend = identity.backend_name(svc.name)
        old = states.get(svc.name)
        if old is None or old.key != key:
            in_lb = any(
                s.backend == backend and revision_of.get((s.backend, s.server)) == canary.revision
                for lb in observed.lbs
                for s in lb.stats
            )
            if not in_lb:
                continue  # not deployed yet: the declared weights (canary 0) apply
            state = CanaryState(svc.name, key, baseline.revision, canary.revision)
            state.updated_at = now
            _measure(state, observed, revision_of, events, backend)  # starting point
            state.history.append(f"started at step 1/{len(_steps(canary))}")
            out[svc.name] = state
            continue
        state = copy.deepcopy(old)
        deltas = _measure(state, observed, revision_of, events, backend)
        interval = max(0.0, now - state.updated_at)
        state.updated_at = now
        if state.status not in ("aborted", "promoted"):
            _judge(state, baseline, canary, deltas, interval)
        out[svc.name] = state
    return out


def _revisions(observed: ObservedState, env: str) -> dict[tuple[str, str], str]:
    """(backend, server) -> the release revision of its container, for ``env``."""
    revision_of: dict[tuple[str, str], str] = {}
    for host in observed.hosts:
        for c in host.containers:
            if c.label(identity.ENVIRONMENT) == env:
                backend = identity.backend_name(c.label(identity.SERVICE))
                server = identity.server_name(host.name, c.name)
                revision_of[(backend, server)] = c.label(identity.REVISION)
    return revision_of


def _judge(
    state: CanaryState,
    baseline: Release,
    canary: Release,
    deltas: Mapping[str, Counts],
    interval: float,
) -> None:
    """One step of the sequential decision for ``state`` (a copy the caller owns), from
    the counts each revision got since the last look, ``interval`` seconds ago."""
    progress = (
        Progress.from_dict(_steps(canary), _analysis(canary), state.progress)
        if state.progress
        else Progress(_steps(canary), _analysis(canary))
    )
    progress.observe(
        deltas.get(canary.revision, Counts(0, 0)),
        deltas.get(baseline.revision, Counts(0, 0)),
        interval,
    )
    verdict = progress.verdict()
    if verdict.action == "advance":
        progress.advance()
        state.history.append(f"{verdict.reason}; step {progress.step + 1} next")
    state.status = {
        "abort": "aborted",
        "promote": "promoted",
        "paused": "paused",
    }.get(verdict.action, "progressing")
    if verdict.action in ("abort", "promote"):
        state.history.append(verdict.reason)
    state.reason = verdict.reason
    state.progress = {**progress.to_dict(), "evidence": verdict.evidence}


def _measure(
    state: CanaryState,
    observed: ObservedState,
    revision_of: Mapping[tuple[str, str], str],
    events: Mapping[str, str],
    backend: str,
) -> dict[str, Counts]:
    """Feed one look at every LB host into the state's meter, totals and response
    times; the increments of requests and errors per revision of ``backend``."""
    deltas: dict[str, Counts] = {}
    for lb in observed.lbs:
        stats = [s for s in lb.stats if s.backend == backend]
        generation = str(lb.worker_pid)
        for (_, revision), c in state.meter.update(lb.host, generation, stats, revision_of).items():
            prev = deltas.get(revision, Counts(0, 0))
            deltas[revision] = Counts(prev.requests + c.requests, prev.errors + c.errors)
        for r in state.cursor.new(parse_events(events.get(lb.host, ""))):
            rev = revision_of.get((r.backend, r.server))
            if r.backend == backend and rev is not None and r.total_ms >= 0:
                kept = state.times.setdefault(rev, [])
                kept.append(r.total_ms)
                del kept[:-MAX_TIMES]
    for revision, c in deltas.items():
        total = state.totals.setdefault(revision, [0, 0])
        total[0] += c.requests
        total[1] += c.errors
    return deltas


def effective_weights(svc: Service, state: CanaryState | None) -> dict[str, int] | None:
    """revision -> weight while a canary runs; None: the declared weights apply."""
    pair = canary_pair(svc)
    if pair is None or state is None:
        return None
    baseline, canary = pair
    if state.key.split(":")[:2] != [baseline.revision, canary.revision]:
        return None
    if state.status == "aborted":
        return None
    if state.status == "promoted":
        w = 100
    else:
        assert canary.canary is not None
        step = min(int(state.progress.get("step", 0)), len(canary.canary.steps) - 1)
        w = canary.canary.steps[step].weight
    return {baseline.revision: 100 - w, canary.revision: w}


def overlay(desired: DesiredState, states: Mapping[str, CanaryState]) -> DesiredState:
    """``desired`` with each canary's weights of its current step (see module doc)."""

    def weighted(svc: Service) -> Service:
        weights = effective_weights(svc, states.get(svc.name))
        if weights is None:
            return svc
        return replace(
            svc, releases=tuple(replace(r, weight=weights[r.revision]) for r in svc.releases)
        )

    return replace(desired, services=tuple(weighted(s) for s in desired.services))
