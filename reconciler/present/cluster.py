"""How an environment is driven, for `status`: its mode and, in etcd mode, which
replica leads, the commit it applied last and the services held there (read from etcd
when the command ran: a standby's own history may not know them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClusterView:
    mode: str  # "ssh" or "etcd"
    leader: str | None = None  # the leading replica's id (None: none, or unknown)
    error: str | None = None  # why the leader could not be read
    applied: str | None = None  # the commit the leader applied last (None: none yet)
    held: Mapping[str, str] = field(default_factory=dict)  # held there: service -> why


def cluster_data(view: ClusterView | None) -> dict[str, Any]:
    if view is None:
        return {"mode": "ssh"}
    out: dict[str, Any] = {"mode": view.mode}
    if view.mode == "etcd":
        out["leader"] = view.leader
        out["applied"] = {"commit": view.applied, "held": dict(view.held)}
        if view.error:
            out["error"] = view.error
    return out


def cluster_lines(view: ClusterView | None) -> list[str]:
    """Nothing in ssh mode (as before); in etcd mode a line naming the leader and its
    last commit, and one per service held there."""
    if view is None or view.mode != "etcd":
        return []
    if view.error:
        return [f"mode etcd: leader unknown ({view.error})"]
    if view.leader is None:
        return ["mode etcd: NO LEADER (no replica holds the leader key: nothing reconciles)"]
    last = f", its last commit {view.applied[:7]}" if view.applied else ""
    return [f"mode etcd: leader is {view.leader}{last}"] + [
        f"HELD by the leader at {(view.applied or '')[:7]}: {svc}: {why}"
        for svc, why in sorted(view.held.items())]
