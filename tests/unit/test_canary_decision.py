"""The canary decision rule: exactness of the e-process, its error rates in simulation
(side by side with Flagger's fixed-threshold rule), and the guards around it."""

from __future__ import annotations

import math

import pytest
from canary_sim import Traffic, abort_rates

from reconciler.canary.decision import (
    Analysis,
    Counts,
    EProcess,
    Progress,
    Step,
    log_likelihood_ratio,
)


@pytest.mark.parametrize(("n1", "n2", "m"), [(10, 90, 5), (50, 50, 7), (3, 400, 12), (200, 20, 30)])
def test_likelihood_ratio_has_expectation_one_under_the_null(n1: int, n2: int, m: int) -> None:
    # Under psi = 1 the canary's errors x are hypergeometric given the margins; the
    # likelihood ratio must average to exactly 1 (the martingale property).
    total = math.comb(n1 + n2, m)
    for psi in (1.5, 3.0, 10.0):
        expectation = sum(
            math.comb(n1, x)
            * math.comb(n2, m - x)
            / total
            * math.exp(log_likelihood_ratio(Counts(n1, x), Counts(n2, m - x), psi))
            for x in range(max(0, m - n2), min(n1, m) + 1)
        )
        assert expectation == pytest.approx(1.0, rel=1e-9)


def test_evidence_grows_only_when_the_canary_fails_more() -> None:
    worse, better = EProcess(), EProcess()
    for _ in range(10):
        worse.update(Counts(100, 4), Counts(900, 9))
        better.update(Counts(100, 0), Counts(900, 9))
    assert worse.value > 100 > 1 > better.value


def test_identical_canary_is_rarely_aborted_and_a_worse_one_is_caught() -> None:
    """1000 simulated canaries each, at 50 requests/s with a 1% baseline error rate,
    5% -> 25% -> 50% -> 100% a minute each, judged every 10 s."""
    same = abort_rates(Traffic(baseline_error=0.01, canary_error=0.01), runs=1000, seed=7)
    worse = abort_rates(Traffic(baseline_error=0.01, canary_error=0.03), runs=1000, seed=8)
    print(
        f"\nidentical canary: aborted ours {same.ours_abort:.1%}, Flagger {same.flagger_abort:.1%}"
        f"\n3x error rate:    aborted ours {worse.ours_abort:.1%}, Flagger {worse.flagger_abort:.1%}"
        f" (median time to decide: ours {worse.ours_median_s:.0f}s, Flagger {worse.flagger_median_s:.0f}s)"
    )
    assert same.ours_abort <= 0.01
    assert worse.ours_abort >= 0.95


def steps() -> tuple[Step, ...]:
    return (Step(10, 30, 50), Step(100, 30, 50))


def test_no_traffic_pauses_and_never_decides() -> None:
    p = Progress(steps())
    for _ in range(100):
        p.observe(Counts(0, 0), Counts(0, 0), 10)
        v = p.verdict()
        assert v.action == "paused", v
    assert "no traffic on either side" in v.reason


def test_a_canary_without_requests_while_the_baseline_has_them_fails() -> None:
    p = Progress(steps())
    p.observe(Counts(0, 0), Counts(60, 0), 10)
    v = p.verdict()
    assert v.action == "abort" and "got no requests while the baseline got 60" in v.reason


def test_absolute_error_limit_is_a_second_guard() -> None:
    p = Progress(steps(), Analysis(max_error_rate=0.05))
    # 6.7% on both sides: not worse than the baseline, but above the absolute limit.
    p.observe(Counts(120, 8), Counts(1080, 72), 10)
    v = p.verdict()
    assert v.action == "abort" and "above the limit 5.00%" in v.reason


def test_promotion_needs_every_step_and_its_minimum_traffic() -> None:
    p = Progress(steps())
    p.observe(Counts(20, 0), Counts(180, 1), 30)
    assert p.verdict().action == "continue"  # 20 of 50 canary requests
    p.observe(Counts(30, 0), Counts(270, 2), 10)
    assert p.verdict().action == "advance"
    p.advance()
    p.observe(Counts(60, 0), Counts(0, 0), 30)
    v = p.verdict()
    assert v.action == "promote" and "step 2/2 at 100% passed" in v.reason
