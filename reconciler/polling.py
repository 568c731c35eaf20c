"""Intervals of a poll that should notice a change soon without spinning.

A wait for something that usually happens within milliseconds (a container answering,
a server UP after its first check, sessions at 0) polls first after ``first`` seconds,
then each interval ``factor`` times longer, up to ``cap``: a quick change is seen almost
at once, a slow one costs a poll every ``cap`` seconds, as a fixed interval would.
"""

from __future__ import annotations

from collections.abc import Iterator

FIRST_S = 0.02
FACTOR = 1.5
CAP_S = 0.1


def intervals(
    first: float = FIRST_S, factor: float = FACTOR, cap: float = CAP_S
) -> Iterator[float]:
    """Sleep times of a poll: ``first``, then ``factor`` times longer each, at most ``cap``."""
    delay = min(first, cap)
    while True:
        yield delay
        delay = min(delay * factor, cap)
