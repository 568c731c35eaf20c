"""Is the canary worse than the baseline? A sequential test that may be checked at any
time, plus the guards around it. Pure: counts in, verdict out.

The test compares error counts of the canary and the baseline over the same intervals.
Within one interval, given how many requests each side got (the realised split, not the
configured weights) and how many errors there were in all, the canary's share of the
errors follows Fisher's noncentral hypergeometric distribution with odds ratio psi:
psi = 1 when both sides fail alike, psi > 1 when the canary fails more. The likelihood
ratio of psi against 1, conditional on the interval's margins, has expectation 1 under
the null whatever happened before; the product over intervals is therefore a test
martingale, and a mixture of them over a grid of psi values is an e-process (Ville:
P(ever >= 1/alpha) <= alpha). So the canary is aborted as soon as the evidence
reaches 1/alpha, however often it is looked at (always-valid inference as in Johari et
al. 2017 and Lindon et al. 2022), and an identical canary is aborted with probability
at most alpha. A canary that fails less than the baseline (psi < 1) only makes the
evidence smaller, so the one-sided null "not worse" is covered too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ODDS_RATIOS = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class Counts:
    """Requests and errors of one side over one interval (deltas, never totals)."""

    requests: int
    errors: int

    def __post_init__(self) -> None:
        if self.requests < 0 or self.errors < 0 or self.errors > self.requests:
            raise ValueError(f"bad counts {self.requests} requests, {self.errors} errors")


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def log_likelihood_ratio(canary: Counts, baseline: Counts, psi: float) -> float:
    """log P_psi(X = x) / P_1(X = x) for the canary's errors x given both sides'
    requests and the interval's total errors (Fisher's noncentral hypergeometric)."""
    return log_likelihood_ratios(canary, baseline, (psi,))[0]


def log_likelihood_ratios(
    canary: Counts, baseline: Counts, odds_ratios: tuple[float, ...]
) -> list[float]:
    """``log_likelihood_ratio`` for each odds ratio: the hypergeometric weights, which do
    not depend on it, are computed once."""
    n1, n2 = canary.requests, baseline.requests
    m = canary.errors + baseline.errors
    lo, hi = max(0, m - n2), min(n1, m)
    if m == 0 or lo == hi:
        return [0.0] * len(odds_ratios)  # the margins fix x: no information
    log_w = [_log_comb(n1, u) + _log_comb(n2, m - u) for u in range(lo, hi + 1)]
    log_null = _logsumexp(log_w)
    out = []
    for psi in odds_ratios:
        log_psi = math.log(psi)
        numerator = canary.errors * log_psi
        out.append(
            numerator
            - (
                _logsumexp([w + u * log_psi for u, w in zip(range(lo, hi + 1), log_w, strict=True)])
                - log_null
            )
        )
    return out


@dataclass
class EProcess:
    """Evidence that the canary fails more often than the baseline: the equal-weight
    mixture over ``odds_ratios`` of the products of conditional likelihood ratios."""

    odds_ratios: tuple[float, ...] = DEFAULT_ODDS_RATIOS
    log_products: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.log_products:
            self.log_products = [0.0] * len(self.odds_ratios)

    def update(self, canary: Counts, baseline: Counts) -> None:
        ratios = log_likelihood_ratios(canary, baseline, self.odds_ratios)
        for i, r in enumerate(ratios):
            self.log_products[i] += r

    @property
    def value(self) -> float:
        """The evidence: 1 at the start; reject "not worse" when it reaches 1/alpha."""
        return math.exp(_logsumexp(self.log_products) - math.log(len(self.log_products)))


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Step:
    """One step of a progression: the canary's weight, held at least ``min_duration_s``
    and until the canary got ``min_requests`` requests in it."""

    weight: int
    min_duration_s: float
    min_requests: int


@dataclass(frozen=True)
class Analysis:
    """``confidence``: 1 - alpha, the bound on aborting a canary that is not worse.
    ``max_error_rate``: abort when the canary's error rate since the start is above
    it (with at least ``guard_min_requests`` requests), whatever the baseline does.
    ``silence_requests``: a canary with weight above 0 that got no request while the
    baseline got this many in the same step has failed (it is not reachable)."""

    confidence: float = 0.99
    max_error_rate: float = 0.05
    guard_min_requests: int = 100
    silence_requests: int = 50
    odds_ratios: tuple[float, ...] = DEFAULT_ODDS_RATIOS


@dataclass(frozen=True)
class Verdict:
    action: str  # "continue", "advance", "promote", "abort", "paused"
    reason: str
    evidence: float


@dataclass
class Progress:
    """Where a canary's analysis stands: the step, what each side got in it and since
    the start, and the evidence. ``observe`` feeds one interval, ``verdict`` says what
    to do."""

    steps: tuple[Step, ...]
    analysis: Analysis = field(default_factory=Analysis)
    step: int = 0
    step_elapsed_s: float = 0.0
    step_canary: Counts = Counts(0, 0)
    step_baseline: Counts = Counts(0, 0)
    total_canary: Counts = Counts(0, 0)
    total_baseline: Counts = Counts(0, 0)
    last_interval_requests: int = 0
    evidence: EProcess = field(default_factory=EProcess)

    def __post_init__(self) -> None:
        self.evidence = EProcess(self.analysis.odds_ratios)

    def observe(self, canary: Counts, baseline: Counts, seconds: float) -> None:
        self.evidence.update(canary, baseline)
        self.step_elapsed_s += seconds
        self.step_canary = _add(self.step_canary, canary)
        self.step_baseline = _add(self.step_baseline, baseline)
        self.total_canary = _add(self.total_canary, canary)
        self.total_baseline = _add(self.total_baseline, baseline)
        self.last_interval_requests = canary.requests + baseline.requests

    def to_dict(self) -> dict[str, Any]:
        """What changes as the analysis goes (steps and settings come from the manifest)."""
        return {
            "step": self.step,
            "step_elapsed_s": self.step_elapsed_s,
            "counts": [
                [c.requests, c.errors]
                for c in (
                    self.step_canary,
                    self.step_baseline,
                    self.total_canary,
                    self.total_baseline,
                )
            ],
            "last_interval_requests": self.last_interval_requests,
            "log_products": self.evidence.log_products,
        }

    @classmethod
    def from_dict(
        cls, steps: tuple[Step, ...], analysis: Analysis, data: dict[str, Any]
    ) -> Progress:
        p = cls(steps, analysis)
        p.step = min(int(data["step"]), len(steps) - 1)
        p.step_elapsed_s = float(data["step_elapsed_s"])
        p.step_canary, p.step_baseline, p.total_canary, p.total_baseline = (
            Counts(int(r), int(e)) for r, e in data["counts"]
        )
        p.last_interval_requests = int(data["last_interval_requests"])
        if len(data["log_products"]) == len(p.evidence.log_products):
            p.evidence.log_products = [float(x) for x in data["log_products"]]
        return p

    def advance(self) -> None:
        self.step += 1
        self.step_elapsed_s = 0.0
        self.step_canary = self.step_baseline = Counts(0, 0)

    def verdict(self) -> Verdict:
        a, e = self.analysis, self.evidence.value
        step = self.steps[self.step]
        where = f"step {self.step + 1}/{len(self.steps)} at {step.weight}%"
        threshold = 1 / (1 - a.confidence)
        if e >= threshold:
            return Verdict(
                "abort",
                f"{where}: the canary fails more often than the baseline "
                f"({_rate(self.total_canary)} vs {_rate(self.total_baseline)}; "
                f"evidence {e:.3g} >= {threshold:.3g})",
                e,
            )
        c = self.total_canary
        if c.requests >= a.guard_min_requests and c.errors / c.requests > a.max_error_rate:
            return Verdict(
                "abort",
                f"{where}: canary error rate {_rate(c)} is above the limit {a.max_error_rate:.2%}",
                e,
            )
        if (
            step.weight > 0
            and self.step_canary.requests == 0
            and self.step_baseline.requests >= a.silence_requests
        ):
            return Verdict(
                "abort",
                f"{where}: the canary got no requests while the baseline got "
                f"{self.step_baseline.requests}",
                e,
            )
        if self.last_interval_requests == 0:
            return Verdict(
                "paused",
                f"{where}: no traffic on either side in the last interval; nothing to "
                "judge, waiting (never promoted or aborted on no data)",
                e,
            )
        if (
            self.step_elapsed_s >= step.min_duration_s
            and self.step_canary.requests >= step.min_requests
        ):
            last = self.step + 1 == len(self.steps)
            return Verdict(
                "promote" if last else "advance",
                f"{where} passed: {self.step_canary.requests} canary requests in "
                f"{self.step_elapsed_s:.0f}s, evidence {e:.3g} < {threshold:.3g}",
                e,
            )
        return Verdict(
            "continue",
            f"{where}: {self.step_canary.requests}/{step.min_requests} canary requests, "
            f"{self.step_elapsed_s:.0f}/{step.min_duration_s:.0f}s",
            e,
        )


def _add(a: Counts, b: Counts) -> Counts:
    return Counts(a.requests + b.requests, a.errors + b.errors)


def _rate(c: Counts) -> str:
    return f"{c.errors}/{c.requests} = {c.errors / c.requests:.2%}" if c.requests else "no requests"
