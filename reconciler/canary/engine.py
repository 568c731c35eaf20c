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
from reconciler.canary.latency import LatencySettings
from reconciler.canary.measure import Meter
from reconciler.canary.pair import canary_pair
from reconciler.canary.sides import Look, add_to_summary, split, summarize
from reconciler.lb.haproxy.requestlog import LogCursor, Request, parse_events, percentile
from reconciler.model import DesiredState, ObservedState, Release, Service
from reconciler.records.actions import ActionTable

MAX_TIMES = 5000  # response times kept per revision for the percentiles
MAX_LOOKS = 720  # looks kept for the evidence over time (2 h at one a 10 s)


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
    # one entry a look: {"t", "evidence", "step" (1-based), "weights": {revision: w}}
    looks: list[dict[str, Any]] = field(default_factory=list)
    actions: dict[str, Any] = field(default_factory=dict)  # sides.add_to_summary
    admitted: list[str] = field(default_factory=list)  # ActionTable names, across looks

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

    def action_summary(self) -> dict[str, Any]:
        """action -> "canary"/"baseline" -> requests, errors, error rate, p50, p95."""
        return summarize(self.actions)


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


def _analysis(svc: Service, rel: Release) -> Analysis:
    c = rel.canary
    assert c is not None
    lat = c.latency
    settings = None if lat is None else LatencySettings(lat.quantile, lat.max_slowdown, lat.min_ms)
    return Analysis(
        confidence=c.confidence,
        max_error_rate=c.max_error_rate,
        latency=settings,
        actions=tuple(a.name for a in svc.actions),
    )


def _progress(svc: Service, canary: Release, state: CanaryState) -> Progress:
    steps, analysis = _steps(canary), _analysis(svc, canary)
    if state.progress:
        return Progress.from_dict(steps, analysis, state.progress)
    return Progress(steps, analysis)


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
            _, look = _measure(state, svc, observed, revision_of, events)  # starting point
            _prime(state, svc, canary, look)
            state.history.append(f"started at step 1/{len(_steps(canary))}")
            out[svc.name] = state
            continue
        state = copy.deepcopy(old)
        deltas, look = _measure(state, svc, observed, revision_of, events)
        interval = max(0.0, now - state.updated_at)
        state.updated_at = now
        if state.status not in ("aborted", "promoted"):
            _judge(state, svc, (baseline, canary), (deltas, look), interval)
            _record_look(state, svc, now)
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


def _prime(state: CanaryState, svc: Service, canary: Release, look: Look | None) -> None:
    """The analysis's starting point: the baseline's times logged before the canary's
    first interval are its earlier intervals, so the first interval has a threshold."""
    progress = _progress(svc, canary, state)
    if progress.latency is not None and look is not None:
        progress.latency.observe(look.samples)
    state.progress = {**progress.to_dict(), "evidence": progress.value}


def _judge(
    state: CanaryState,
    svc: Service,
    pair: tuple[Release, Release],
    seen: tuple[Mapping[str, Counts], Look | None],
    interval: float,
) -> None:
    """One step of the sequential decision for ``state`` (a copy the caller owns), from
    the counts each revision got since the last look, ``interval`` seconds ago, and the
    request log's records of each side by action (None: the log was not read)."""
    (baseline, canary), (deltas, look) = pair, seen
    progress = _progress(svc, canary, state)
    progress.observe(
        deltas.get(canary.revision, Counts(0, 0)),
        deltas.get(baseline.revision, Counts(0, 0)),
        interval,
        None if look is None else look.samples,
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
    state.progress = {**progress.to_dict(), "evidence": verdict.evidence, "parts": progress.parts()}


def _record_look(state: CanaryState, svc: Service, now: float) -> None:
    """Append this look to ``state.looks`` (bounded): the evidence over time."""
    weights = effective_weights(svc, state) or {r.revision: r.weight for r in svc.releases}
    state.looks.append(
        {
            "t": now,
            "evidence": state.evidence,
            "step": int(state.progress.get("step", 0)) + 1,
            "weights": weights,
        }
    )
    del state.looks[:-MAX_LOOKS]


def _measure(
    state: CanaryState,
    svc: Service,
    observed: ObservedState,
    revision_of: Mapping[tuple[str, str], str],
    events: Mapping[str, str],
) -> tuple[dict[str, Counts], Look | None]:
    """Feed one look at every LB host into the state's meter, totals, response times
    and per-action summary; the increments of requests and errors per revision of the
    service's backend, and the new request log records by action and side (None when
    no LB host's log was read)."""
    backend = identity.backend_name(svc.name)
    errors_4xx = any(r.canary.errors_4xx for r in svc.releases if r.canary)
    deltas: dict[str, Counts] = {}
    requests: list[Request] = []
    for lb in observed.lbs:
        stats = [s for s in lb.stats if s.backend == backend]
        generation = str(lb.worker_pid)
        counted = state.meter.update(lb.host, generation, stats, revision_of, errors_4xx)
        for (_, revision), c in counted.items():
            prev = deltas.get(revision, Counts(0, 0))
            deltas[revision] = Counts(prev.requests + c.requests, prev.errors + c.errors)
        requests += [
            r
            for r in state.cursor.new(parse_events(events.get(lb.host, "")))
            if r.backend == backend
        ]
    for r in requests:
        rev = revision_of.get((r.backend, r.server))
        if rev is not None and r.total_ms >= 0:
            kept = state.times.setdefault(rev, [])
            kept.append(r.total_ms)
            del kept[:-MAX_TIMES]
    for revision, c in deltas.items():
        total = state.totals.setdefault(revision, [0, 0])
        total[0] += c.requests
        total[1] += c.errors
    if not any(events.get(lb.host) for lb in observed.lbs):
        return deltas, None
    return deltas, _look(state, svc, backend, requests, revision_of, errors_4xx)


def _look(
    state: CanaryState,
    svc: Service,
    backend: str,
    requests: list[Request],
    revision_of: Mapping[tuple[str, str], str],
    errors_4xx: bool,
) -> Look:
    """The records by action and side, folded into the per-action summary too."""
    side_of = {
        server: "canary" if rev == state.canary else "baseline"
        for (be, server), rev in revision_of.items()
        if be == backend and rev in (state.canary, state.baseline)
    }
    table = ActionTable(svc.actions, svc.max_actions, set(state.admitted))
    look = split(requests, backend, side_of, table, errors_4xx)
    state.admitted = sorted(table.admitted)
    add_to_summary(state.actions, look)
    return look


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
