"""How an environment is driven, for `status`: its mode and, in etcd mode, which
replica leads (read from etcd when the command ran)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClusterView:
    mode: str  # "ssh" or "etcd"
    leader: str | None = None  # the leading replica's id (None: none, or unknown)
    error: str | None = None  # why the leader could not be read


def cluster_data(view: ClusterView | None) -> dict[str, Any]:
    if view is None:
        return {"mode": "ssh"}
    out: dict[str, Any] = {"mode": view.mode}
    if view.mode == "etcd":
        out["leader"] = view.leader
        if view.error:
            out["error"] = view.error
    return out


def cluster_lines(view: ClusterView | None) -> list[str]:
    """Nothing in ssh mode (as before); in etcd mode one line naming the leader."""
    if view is None or view.mode != "etcd":
        return []
    if view.error:
        return [f"mode etcd: leader unknown ({view.error})"]
    if view.leader is None:
        return ["mode etcd: NO LEADER (no replica holds the leader key: nothing reconciles)"]
    return [f"mode etcd: leader is {view.leader}"]
