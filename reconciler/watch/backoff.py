"""How long `watch` waits after transient failures in a row."""

from __future__ import annotations

import random

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
JITTER = (0.5, 1.5)


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempt``-th transient failure in a row (1-based):
    1 s doubling per attempt up to 60 s, times a jitter factor drawn uniformly from
    [0.5, 1.5] (so at most 90 s), so that watchers that failed together do not retry in
    step. Any number of attempts is fine (the exponent is capped: no OverflowError after
    a day-long outage). ``rng`` is for tests; the default is the module's generator.
    ValueError when ``attempt`` < 1."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, not {attempt}")
    base = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** min(attempt - 1, 32))
    return base * (rng or random).uniform(*JITTER)  # jitter, not crypto
