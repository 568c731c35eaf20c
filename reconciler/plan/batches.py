"""Rollout batches: which app hosts change together. Pure; both modes use it (``ssh``:
``reconciler.session.passrun``, etcd with agents: ``reconciler.agent.drive``)."""

from __future__ import annotations

from reconciler.model import DesiredState, ObservedState


def batches(desired: DesiredState, observed: ObservedState) -> list[list[str]]:
    """App hosts in rollout batches: ``rollout.limit`` at a time in inventory order
    (sorted names); hosts being retired come last, in a batch of their own."""
    apps = sorted(desired.app_host_names)
    limit = desired.rollout.limit or max(1, len(apps))
    out = [apps[i : i + limit] for i in range(0, len(apps), limit)] or [[]]
    retired = sorted({h.name for h in observed.hosts} - set(apps))
    if retired:
        out.append(retired)
    return out
