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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.canary.evidence import (
    DEFAULT_ODDS_RATIOS,
    Counts,
    EProcess,
    log_likelihood_ratio,
    log_likelihood_ratios,
)
from reconciler.canary.latency import ALL, LatencyEvidence, LatencySettings, Sample

__all__ = [
    "DEFAULT_ODDS_RATIOS",
    "Analysis",
    "Counts",
    "EProcess",
    "Progress",
    "Step",
    "Verdict",
    "log_likelihood_ratio",
    "log_likelihood_ratios",
]

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
    baseline got this many in the same step has failed (it is not reachable).
    ``latency``: what slower means (``latency`` module), None: times are not judged.
    ``actions``: the service's declared actions, first in line for latency slots."""

    confidence: float = 0.99
    max_error_rate: float = 0.05
    guard_min_requests: int = 100
    silence_requests: int = 50
    odds_ratios: tuple[float, ...] = DEFAULT_ODDS_RATIOS
    latency: LatencySettings | None = field(default_factory=LatencySettings)
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    action: str  # "continue", "advance", "promote", "abort", "paused"
    reason: str
    evidence: float


@dataclass
class Progress:
    """Where a canary's analysis stands: the step, what each side got in it and since
    the start, and the evidence. ``observe`` feeds one interval, ``verdict`` says what
    to do.

    The evidence judged is ``E = 1/2 E_errors + 1/2 E_latency`` (``latency`` module for
    the second), or ``E_errors`` alone when latency is off. Both are e-processes on the
    same looks (each look's counts and times are known when it is taken) and the
    weights are fixed before the first look, so E is one too: under the null "the
    canary neither fails more often nor is slower than ``max_slowdown`` times the
    baseline", P(E ever >= 1/alpha) <= alpha. Equal halves: a regression of either
    kind needs only twice the evidence it would need alone (log 2, about one more
    interval of a clear regression), and neither kind can be drowned by the other."""

    steps: tuple[Step, ...]
    analysis: Analysis = field(default_factory=Analysis)
    step: int = 0
    step_elapsed_s: float = 0.0
    step_canary: Counts = field(default_factory=lambda: Counts(0, 0))
    step_baseline: Counts = field(default_factory=lambda: Counts(0, 0))
    total_canary: Counts = field(default_factory=lambda: Counts(0, 0))
    total_baseline: Counts = field(default_factory=lambda: Counts(0, 0))
    last_interval_requests: int = 0
    evidence: EProcess = field(default_factory=EProcess)
    latency: LatencyEvidence | None = None

    def __post_init__(self) -> None:
        a = self.analysis
        self.evidence = EProcess(a.odds_ratios)
        if a.latency is not None:
            self.latency = LatencyEvidence(a.latency, a.odds_ratios, a.actions)

    def observe(
        self,
        canary: Counts,
        baseline: Counts,
        seconds: float,
        times: Mapping[str, Sample] | None = None,
    ) -> None:
        """Feed one interval: the counts of each side and, when the request log was
        read, the total times of each action's requests per side."""
        self.evidence.update(canary, baseline)
        if self.latency is not None and times is not None:
            self.latency.observe(times)
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
            **({"latency": self.latency.to_dict()} if self.latency is not None else {}),
        }

    @property
    def value(self) -> float:
        """The evidence judged (see the class doc): 1 at the start."""
        if self.latency is None:
            return self.evidence.value
        return 0.5 * self.evidence.value + 0.5 * self.latency.value()

    def parts(self) -> dict[str, Any]:
        """Each e-process's own evidence, for status: errors, latency of all requests
        and of each judged action."""
        lat = self.latency
        return {
            "errors": self.evidence.value,
            "latency": None if lat is None else lat.all_value(),
            "actions": {} if lat is None else lat.action_values(),
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
        if p.latency is not None and "latency" in data:
            p.latency.load(data["latency"])
        return p

    def advance(self) -> None:
        self.step += 1
        self.step_elapsed_s = 0.0
        self.step_canary = self.step_baseline = Counts(0, 0)

    def _why(self, threshold: float) -> str:
        """Why the evidence passed ``threshold``: the larger of its two halves."""
        lat = self.latency
        if lat is None or self.evidence.value >= lat.value():
            return (
                f"the canary fails more often than the baseline "
                f"({_rate(self.total_canary)} vs {_rate(self.total_baseline)})"
            )
        return _latency_reason(lat, threshold)

    def verdict(self) -> Verdict:
        a, e = self.analysis, self.value
        step = self.steps[self.step]
        where = f"step {self.step + 1}/{len(self.steps)} at {step.weight}%"
        threshold = 1 / (1 - a.confidence)
        if e >= threshold:
            why = f"{self._why(threshold)} (evidence {e:.3g} >= {threshold:.3g})"
            return Verdict("abort", f"{where}: {why}", e)
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


def _latency_reason(lat: LatencyEvidence, threshold: float) -> str:
    """What is slower: the one action whose own evidence passed ``threshold`` (the
    message names it), else all requests (and every action that passed it)."""
    over = sorted(((v, n) for n, v in lat.action_values().items() if v >= threshold), reverse=True)
    if len(over) == 1:
        return f"latency: action {over[0][1]} {lat.describe(over[0][1])}"
    slower = "".join(f"; action {n} {lat.describe(n)}" for _, n in over)
    return f"latency: {lat.describe(ALL)}{slower}"


def _add(a: Counts, b: Counts) -> Counts:
    return Counts(a.requests + b.requests, a.errors + b.errors)


def _rate(c: Counts) -> str:
    return f"{c.errors}/{c.requests} = {c.errors / c.requests:.2%}" if c.requests else "no requests"
