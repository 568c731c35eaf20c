"""The conditional e-process shared by the canary's error and latency tests: counts of
"bad" requests (errors, or slow requests) on each side of one interval in, a likelihood
ratio out (the reasoning is in ``decision``'s module doc). Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
