"""The plan that runs once the images are had: no pull left in it."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from reconciler.model import DesiredState, ObservedState
from reconciler.plan.actions import PullImage
from reconciler.plan.planner import Plan, plan


def plan_after_pulls(
    desired: DesiredState,
    observed: ObservedState,
    held: Mapping[str, str],
    failed: Mapping[tuple[str, str], str],
    frozen: Collection[str] = (),
) -> tuple[Plan, dict[str, str]]:
    """The plan once the pulls are done (``observed``: a look after them), and the
    services it holds for want of an image (service -> why); pure.

    A service still planned to pull is held, and the plan made again, until none is:
    its image could not be had (``failed``: (host, image) -> why; the pull may have
    been planned for another service using the same image on that host) or went away
    since. So no plan that runs contains a pull: the executor never pulls. ``frozen``:
    as for ``plan``."""
    holds: dict[str, str] = {}
    while True:
        current = plan(desired, observed, {**held, **holds}, frozen=frozen)
        pulls = [a for a in current.actions if isinstance(a, PullImage)]
        if not pulls:
            return current, holds
        for a in pulls:
            holds.setdefault(
                a.service or "",
                failed.get((a.host, a.image))
                or f"host {a.host}: image {a.image} is not there after it was pulled",
            )
