"""A simulated canary under realistic traffic, judged by the reconciler's rule and, on
its own sample of the same traffic, by Flagger's rule (a fixed minimum success rate per
interval; roll back after ``threshold`` failed checks).

Traffic: requests arrive as a Poisson stream of ``rate`` per second; each goes to the
canary with its step's weight; each fails (5xx) with its side's error rate. Both rules
look every ``interval_s`` seconds and move through the same progression (a step ends
after its duration and its canary requests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from reconciler.canary.decision import Analysis, Counts, Progress, Step

# 5% -> 25% -> 50% -> 100%, a minute each, at 50 requests/s in all.
STEPS = (Step(5, 60, 100), Step(25, 60, 300), Step(50, 60, 300), Step(100, 30, 100))


@dataclass(frozen=True)
class Traffic:
    baseline_error: float
    canary_error: float
    rate: float = 50.0
    interval_s: float = 10.0

    def interval(self, rng: np.random.Generator, weight: int) -> tuple[Counts, Counts]:
        n = int(rng.poisson(self.rate * self.interval_s))
        nc = int(rng.binomial(n, weight / 100))
        nb = n - nc
        return (
            Counts(nc, int(rng.binomial(nc, self.canary_error))),
            Counts(nb, int(rng.binomial(nb, self.baseline_error))),
        )


def _intervals(limit: int = 1000) -> Iterator[int]:
    yield from range(limit)


def ours(
    rng: np.random.Generator,
    traffic: Traffic,
    steps: tuple[Step, ...] = STEPS,
    analysis: Analysis | None = None,
) -> tuple[str, float]:
    """("abort" | "promote", seconds) by the reconciler's rule."""
    progress = Progress(steps, analysis or Analysis())
    for i in _intervals():
        canary, baseline = traffic.interval(rng, steps[progress.step].weight)
        progress.observe(canary, baseline, traffic.interval_s)
        v = progress.verdict()
        if v.action in ("abort", "promote"):
            return v.action, (i + 1) * traffic.interval_s
        if v.action == "advance":
            progress.advance()
    raise AssertionError("the simulated canary never ended")


def flagger(
    rng: np.random.Generator,
    traffic: Traffic,
    steps: tuple[Step, ...] = STEPS,
    min_success: float = 0.99,
    threshold: int = 5,
) -> tuple[str, float]:
    """("abort" | "promote", seconds) by Flagger's rule: each interval the canary's
    success rate is checked against ``min_success``; ``threshold`` failed checks roll
    it back. It advances on the same schedule as ours."""
    failed = step = 0
    elapsed = 0.0
    step_requests = 0
    for i in _intervals():
        canary, _ = traffic.interval(rng, steps[step].weight)
        if canary.requests and 1 - canary.errors / canary.requests < min_success:
            failed += 1
            if failed >= threshold:
                return "abort", (i + 1) * traffic.interval_s
        elapsed += traffic.interval_s
        step_requests += canary.requests
        if elapsed >= steps[step].min_duration_s and step_requests >= steps[step].min_requests:
            if step + 1 == len(steps):
                return "promote", (i + 1) * traffic.interval_s
            step, elapsed, step_requests = step + 1, 0.0, 0
    raise AssertionError("the simulated canary never ended")


@dataclass(frozen=True)
class Rates:
    ours_abort: float
    flagger_abort: float
    ours_median_s: float
    flagger_median_s: float


def abort_rates(traffic: Traffic, runs: int = 1000, seed: int = 1) -> Rates:
    rng = np.random.default_rng(seed)
    a = [ours(rng, traffic) for _ in range(runs)]
    b = [flagger(rng, traffic) for _ in range(runs)]
    return Rates(
        sum(x == "abort" for x, _ in a) / runs,
        sum(x == "abort" for x, _ in b) / runs,
        float(np.median([s for _, s in a])),
        float(np.median([s for _, s in b])),
    )
