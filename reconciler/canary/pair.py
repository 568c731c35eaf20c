"""Which services run a canary: the one question every pass asks, kept apart from the
canary engine so that a pass without canaries does not import it."""

from __future__ import annotations

from reconciler.model import Release, Service


def canary_pair(svc: Service) -> tuple[Release, Release] | None:
    """(baseline, canary) of a service with a canary release; None otherwise."""
    canaries = [r for r in svc.releases if r.canary]
    others = [r for r in svc.releases if not r.canary]
    if len(canaries) != 1 or len(others) != 1:
        return None
    return others[0], canaries[0]
