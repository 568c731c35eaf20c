"""A simulated canary judged on response times, by the reconciler's rule and, on the
same traffic, by a fixed-threshold rule like Flagger's request-duration check.

Traffic: each interval (10 s) gets a Poisson number of requests (``rate`` per second);
each goes to the canary with its step's weight and to one of the service's actions by
its share; its total time is lognormal around the action's median (HAProxy's whole
milliseconds: floored). The canary's times are the baseline's times scaled by
``slowdown`` (all actions, or only ``slow_action``): a scaled lognormal keeps its shape,
so its p95 is ``slowdown`` times the baseline's.

The fixed-threshold rule (Flagger's ``request-duration`` metric with a
``thresholdRange.max``): every interval, the canary's p99 (or p95) over the interval is
compared with a fixed maximum set by a person in advance; ``threshold`` failed checks
roll it back. The maximum here is ``margin`` times the baseline's true quantile (an
operator who knows the service's normal times well).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from reconciler.canary.decision import Analysis, Counts, Progress, Step
from reconciler.canary.latency import LatencySettings, Sample, quantile

# 5% -> 25% -> 50% -> 100%, a minute each, at 30 requests/s in all (300 per interval).
STEPS = (Step(5, 60, 50), Step(25, 60, 200), Step(50, 60, 300), Step(100, 30, 100))


@dataclass(frozen=True)
class Action:
    name: str
    share: float
    median_ms: float
    sigma: float = 0.5


ONE = (Action("all", 1.0, 20.0),)
MIXED = (
    Action("orders.list", 0.4, 8.0),
    Action("orders.show", 0.3, 20.0),
    Action("search", 0.2, 60.0, 0.7),
    Action("report", 0.1, 150.0),
)


@dataclass(frozen=True)
class Traffic:
    actions: tuple[Action, ...] = ONE
    slowdown: float = 1.0
    slow_action: str | None = None  # None: every action is slower
    rate: float = 30.0
    interval_s: float = 10.0

    def true_quantile(self, q: float) -> float:
        """The baseline's q-quantile over all actions (by simulation, fixed seed)."""
        rng = np.random.default_rng(0)
        times = np.concatenate([self._times(rng, a, 20000, 1.0) for a in self.actions])
        weights = np.concatenate([np.full(20000, a.share) for a in self.actions])
        order = np.argsort(times)
        cum = np.cumsum(weights[order]) / weights.sum()
        return float(times[order][np.searchsorted(cum, q)])

    @staticmethod
    def _times(rng: np.random.Generator, a: Action, n: int, scale: float) -> np.ndarray:
        raw = np.exp(rng.normal(math.log(a.median_ms), a.sigma, n)) * scale
        return np.floor(raw).astype(int)

    def interval(self, rng: np.random.Generator, weight: int) -> dict[str, Sample]:
        n = int(rng.poisson(self.rate * self.interval_s))
        per_action = rng.multinomial(n, [a.share for a in self.actions])
        out = {}
        for a, k in zip(self.actions, per_action, strict=True):
            nc = int(rng.binomial(k, weight / 100))
            slow = self.slowdown if self.slow_action in (None, a.name) else 1.0
            out[a.name] = Sample(
                self._times(rng, a, nc, slow).tolist(), self._times(rng, a, k - nc, 1.0).tolist()
            )
        return out


def _counts(samples: dict[str, Sample]) -> tuple[Counts, Counts]:
    nc = sum(len(s.canary) for s in samples.values())
    nb = sum(len(s.baseline) for s in samples.values())
    return Counts(nc, 0), Counts(nb, 0)


def ours(
    rng: np.random.Generator,
    traffic: Traffic,
    settings: LatencySettings | None = None,
    confidence: float = 0.99,
    steps: tuple[Step, ...] = STEPS,
) -> tuple[str, int]:
    """("abort" | "promote", intervals to the decision) by the reconciler's rule."""
    analysis = Analysis(confidence=confidence, latency=settings or LatencySettings())
    progress = Progress(steps, analysis)
    for i in range(1000):
        samples = traffic.interval(rng, steps[progress.step].weight)
        canary, baseline = _counts(samples)
        progress.observe(canary, baseline, traffic.interval_s, samples)
        v = progress.verdict()
        if v.action in ("abort", "promote"):
            return v.action, i + 1
        if v.action == "advance":
            progress.advance()
    raise AssertionError("the simulated canary never ended")


def fixed(
    rng: np.random.Generator,
    traffic: Traffic,
    max_ms: float,
    q: float = 0.99,
    threshold: int = 5,
    steps: tuple[Step, ...] = STEPS,
) -> tuple[str, int]:
    """("abort" | "promote", intervals) by the fixed-threshold rule (module doc); it
    advances on the same schedule as ours."""
    failed = step = 0
    elapsed = 0.0
    step_requests = 0
    for i in range(1000):
        samples = traffic.interval(rng, steps[step].weight)
        times = [x for s in samples.values() for x in s.canary]
        value = quantile(times, q)
        if value is not None and value > max_ms:
            failed += 1
            if failed >= threshold:
                return "abort", i + 1
        elapsed += traffic.interval_s
        step_requests += len(times)
        if elapsed >= steps[step].min_duration_s and step_requests >= steps[step].min_requests:
            if step + 1 == len(steps):
                return "promote", i + 1
            step, elapsed, step_requests = step + 1, 0.0, 0
    raise AssertionError("the simulated canary never ended")
