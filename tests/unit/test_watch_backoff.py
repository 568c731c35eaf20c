"""The backoff of `reconcile watch` after transient errors (reconciler/watch.py): 1 s
doubling to 60 s, times a jitter factor in [0.5, 1.5]; the count restarts after a pass
that ends. The same promise is held end to end, against a Docker engine that goes away
and comes back, by tests/integration/test_watch_promises.py."""

from __future__ import annotations

import logging
import random
import statistics
import time
from pathlib import Path

import pytest

from reconciler.desired.source import RepoSpec
from reconciler.errors import ReconcilerError
from reconciler.watch import BACKOFF_MAX_S, WatchConfig, Watcher, backoff_delay


def base(attempt: int) -> float:
    return float(min(60, 2 ** (attempt - 1)))


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 7, 8, 20])
def test_each_delay_is_the_doubled_base_times_a_jitter_factor(attempt: int) -> None:
    rng = random.Random(attempt)
    factors = [backoff_delay(attempt, rng) / base(attempt) for _ in range(2000)]
    assert all(0.5 <= f <= 1.5 for f in factors), (min(factors), max(factors))
    # the factor is spread over the whole range, not a constant
    assert min(factors) < 0.55 and max(factors) > 1.45, (min(factors), max(factors))
    assert 0.97 < statistics.fmean(factors) < 1.03


def test_the_base_doubles_from_1s_and_stops_at_60s() -> None:
    mid = random.Random(0)
    mid.uniform = lambda a, b: (a + b) / 2  # type: ignore[method-assign]  # factor 1.0
    assert [backoff_delay(n, mid) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert BACKOFF_MAX_S == 60


def test_a_day_long_outage_does_not_overflow() -> None:
    """2.0 ** 1024 raises OverflowError: an exponent left uncapped would crash the
    watcher after ~1025 failures in a row (~17 hours of an engine that does not answer)."""
    for attempt in (1025, 5000, 10**9):
        assert 30 <= backoff_delay(attempt) <= 90


def test_attempt_numbers_start_at_1() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        backoff_delay(0)


class Flaky(Watcher):
    """A watcher whose head never moves and whose passes fail while ``broken``."""

    broken = True

    def __init__(self, cfg: WatchConfig) -> None:
        super().__init__(cfg)
        self.source.head = lambda: "c0ffee"  # type: ignore[method-assign]

    def _pass(self, sha: str, kind: str) -> None:
        if self.broken:
            raise ReconcilerError("cannot reach the local Docker engine: gone")


def test_step_backs_off_logs_the_delay_and_a_good_pass_resets(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = Flaky(WatchConfig(spec=RepoSpec(str(tmp_path)), environment="x",
                          state_dir=tmp_path, drift_s=0.0))
    caplog.set_level(logging.WARNING, logger="reconciler.watch")

    def attempt() -> None:
        w.state.retry_at = 0.0  # as if the delay had passed
        before = time.monotonic()
        w.step()
        record = caplog.records[-1]
        assert record.event == "transient-error"  # type: ignore[attr-defined]
        # the delay logged is the one the loop waits
        assert before + record.delay_s - 0.01 <= w.state.retry_at  # type: ignore[attr-defined]
        assert w.state.retry_at <= time.monotonic() + record.delay_s + 0.01  # type: ignore[attr-defined]
        assert f"retrying in {record.delay_s:.1f}s" in record.getMessage()  # type: ignore[attr-defined]

    for _ in range(4):
        attempt()
    logged = [(r.attempt, r.delay_s) for r in caplog.records]  # type: ignore[attr-defined]
    assert [a for a, _ in logged] == [1, 2, 3, 4]
    assert all(0.5 * base(a) <= d <= 1.5 * base(a) for a, d in logged), logged
    # while the delay runs, a step does not try again
    caplog.clear()
    w.step()
    assert caplog.records == []
    # a pass that ends resets the count: the next failure waits about 1 s again
    w.broken = False
    w.state.retry_at = 0.0
    w.step()
    assert w.state.failures_in_a_row == 0
    w.broken = True
    caplog.clear()
    attempt()
    assert caplog.records[-1].attempt == 1, caplog.records  # type: ignore[attr-defined]
    assert 0.5 <= caplog.records[-1].delay_s <= 1.5  # type: ignore[attr-defined]
