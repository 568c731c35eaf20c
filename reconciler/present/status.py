"""`reconcile status`: what runs, what HAProxy sends where, and how each revision answers.

Pure: desired + observed state (+ the last run) in, text or JSON out. Request counters
come from HAProxy's per-server counters summed per revision; they count since the last
HAProxy reload (a reload resets them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler import identity
from reconciler.canary.engine import CanaryState
from reconciler.canary.pair import canary_pair
from reconciler.model import DesiredState, ObservedState, ServerState, ServerStats, Service
from reconciler.plan.verify import verify
from reconciler.present.cluster import ClusterView, cluster_data, cluster_lines
from reconciler.present.traffic import RevisionTraffic
from reconciler.store import HistorySize, Run


def status_data(
    desired: DesiredState,
    observed: ObservedState,
    last: Run | None,
    held: dict[str, str],
    source: str,
    canaries: Mapping[str, CanaryState] | None = None,
    history: HistorySize | None = None,
) -> dict[str, Any]:
    """Everything ``status`` shows, as JSON-ready data (``status --json`` prints it as is):
    the last run, the history's size, each HAProxy, each desired service with its
    containers and traffic per revision, and the outcome check (``verify``) now."""
    canaries = canaries or {}
    servers = _Servers(
        stats={(s.backend, s.server): s for lb in observed.lbs for s in lb.stats},
        states={(s.backend, s.server): s for lb in observed.lbs for s in lb.servers},
    )
    services = [
        _service_data(svc, desired.environment, observed, servers, held, canaries.get(svc.name))
        for svc in desired.services
    ]
    return {
        "environment": desired.environment,
        "desired": source,
        "last_run": None
        if last is None
        else {
            "id": last.id,
            "commit": last.commit,
            "status": last.status,
            "started_at": last.started_at,
            "summary": last.summary,
            "looks": last.looks,
            "last_look_at": last.last_look_at,
        },
        "history": None
        if history is None
        else {"path": history.path, "bytes": history.bytes, "runs": history.runs},
        "haproxy": [
            {"host": lb.host, "running": lb.running, "servers": len(lb.servers)}
            for lb in observed.lbs
        ],
        "services": services,
        # what `apply` would call a mismatch now (reconciler.plan.verify); [] when it holds
        "outcome": [str(m) for m in verify(desired, observed, skip=held)],
    }


@dataclass(frozen=True)
class _Servers:
    """What HAProxy reports per (backend, server): counters and runtime state."""

    stats: dict[tuple[str, str], ServerStats]
    states: dict[tuple[str, str], ServerState]


def _service_data(
    svc: Service,
    env: str,
    observed: ObservedState,
    servers: _Servers,
    held: dict[str, str],
    canary: CanaryState | None,
) -> dict[str, Any]:
    """One service: its releases with their traffic, revisions git no longer has that
    still have traffic, where each revision runs, its containers and its canary."""
    traffic: dict[str, RevisionTraffic] = {}
    containers = _containers(svc, env, observed, servers, traffic)
    return {
        "service": svc.name,
        "held": held.get(svc.name),
        "on_hosts": _on_hosts(svc.hosts, containers),
        "releases": [
            {
                "revision": r.revision,
                "weight": r.weight,
                "image": r.spec.image,
                "traffic": traffic.get(r.revision, RevisionTraffic()).to_json(),
            }
            for r in svc.releases
        ],
        "other_revisions": {
            rev: t.to_json()
            for rev, t in traffic.items()
            if rev not in {r.revision for r in svc.releases}
        },
        "replicas": svc.replicas,
        "hosts": list(svc.hosts),
        "containers": sorted(containers, key=lambda c: (c["host"], c["name"])),
        "canary": _canary(svc, canary),
    }


def _containers(
    svc: Service,
    env: str,
    observed: ObservedState,
    servers: _Servers,
    traffic: dict[str, RevisionTraffic],
) -> list[dict[str, Any]]:
    """The service's containers on its hosts, each with its server in HAProxy; their
    counters are added to ``traffic`` (per revision)."""
    backend = identity.backend_name(svc.name)
    containers = []
    for host in svc.hosts:
        for c in observed.host(host).containers:
            if c.label(identity.ENVIRONMENT) != env or c.label(identity.SERVICE) != svc.name:
                continue
            rev = c.label(identity.REVISION)
            server = identity.server_name(host, c.name)
            st, ss = servers.stats.get((backend, server)), servers.states.get((backend, server))
            if st:
                traffic.setdefault(rev, RevisionTraffic()).add(st)
            containers.append(
                {
                    "host": host,
                    "name": c.name,
                    "revision": rev,
                    "status": c.status,
                    "health": c.health,
                    "published": f"{c.published[0]}:{c.published[1]}" if c.published else None,
                    "haproxy": (st.status if st else "not in HAProxy"),
                    "weight": ss.weight if ss else None,
                    "sessions": st.current_sessions if st else 0,
                }
            )
    return containers


def looks_note(run: Run) -> str:
    """`` (N looks, the last at HH:MM:SS)`` for a run that stands for several idle looks."""
    if run.looks <= 1 or run.last_look_at is None:
        return ""
    last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.last_look_at))
    return f" ({run.looks} looks, the last at {last})"


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _serves(c: dict[str, Any]) -> bool:
    return bool(
        c["status"] == "running" and str(c["haproxy"]).startswith("UP") and (c["weight"] or 0) > 0
    )


def _on_hosts(hosts: tuple[str, ...], containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per app host, which revisions run there and how many of their containers serve
    (running, UP in HAProxy, weight above 0): mid-rollout, hosts differ."""
    out = []
    for host in hosts:
        revs: dict[str, dict[str, int]] = {}
        for c in containers:
            if c["host"] == host:
                r = revs.setdefault(c["revision"], {"running": 0, "serving": 0})
                r["running"] += c["status"] == "running"
                r["serving"] += _serves(c)
        out.append({"host": host, "revisions": dict(sorted(revs.items()))})
    return out


def _canary(svc: Service, state: CanaryState | None) -> dict[str, Any] | None:
    """The canary of ``svc`` side by side with its baseline, or None."""
    pair = canary_pair(svc)
    if pair is None:
        return None
    baseline, canary = pair
    assert canary.canary is not None
    steps = [s.weight for s in canary.canary.steps]
    if state is None or state.canary != canary.revision:
        return {
            "baseline": baseline.revision,
            "canary": canary.revision,
            "status": "waiting",
            "reason": "the canary's servers are not in HAProxy yet",
            "steps": steps,
        }
    advice = {
        "aborted": "aborted: revert the commit or push a new revision",
        "promoted": f"promoted: make {canary.revision} the only release in git",
    }.get(state.status)
    return {
        "baseline": baseline.revision,
        "canary": canary.revision,
        "status": state.status,
        "reason": state.reason,
        "advice": advice,
        "step": int(state.progress.get("step", 0)) + 1,
        "steps": steps,
        "evidence": state.evidence,
        "abort_at": 1 / (1 - canary.canary.confidence),
        "sides": {
            "baseline": {"revision": baseline.revision, **state.summary(baseline.revision)},
            "canary": {"revision": canary.revision, **state.summary(canary.revision)},
        },
        "history": state.history[-10:],
        # per action (p50/p95 by side), each e-process's evidence, and the looks
        "actions": state.action_summary(),
        "evidence_parts": state.progress.get("parts"),
        "looks": state.looks,
    }


def status_json(
    desired: DesiredState,
    observed: ObservedState,
    last: Run | None,
    held: dict[str, str],
    source: str,
    canaries: Mapping[str, CanaryState] | None = None,
    history: HistorySize | None = None,
    cluster: ClusterView | None = None,
) -> str:
    data = status_data(desired, observed, last, held, source, canaries, history)
    data["cluster"] = cluster_data(cluster)
    return json.dumps(data, indent=2) + "\n"


def status_text(
    desired: DesiredState,
    observed: ObservedState,
    last: Run | None,
    held: dict[str, str],
    source: str,
    canaries: Mapping[str, CanaryState] | None = None,
    history: HistorySize | None = None,
    cluster: ClusterView | None = None,
) -> str:
    """``status_data`` for people: the leader (etcd mode), the last run, the HAProxies
    and the outcome check, then one block per service."""
    d = status_data(desired, observed, last, held, source, canaries, history)
    lines = [f"environment {d['environment']}; desired state at {d['desired']}"]
    lines += cluster_lines(cluster)
    if last:
        in_sync = "" if last.commit == desired.commit else " (not the desired commit)"
        lines.append(
            f"last run {last.id}: {last.status} at commit {last.commit[:7]}{in_sync}; "
            f"{last.summary}{looks_note(last)}"
        )
    if history:
        lines.append(
            f"history: {human_bytes(history.bytes)} in {history.path} ({history.runs} runs)"
        )
    for lb in d["haproxy"]:
        state = "running" if lb["running"] else "NOT RUNNING"
        lines.append(f"haproxy on {lb['host']}: {state}, {lb['servers']} servers")
    if d["outcome"]:
        lines.append(f"OUTCOME DIFFERS from the desired state ({len(d['outcome'])}):")
        lines += [f"  {m}" for m in d["outcome"]]
    else:
        lines.append("outcome verified: HAProxy serves exactly the desired containers")
    for svc in d["services"]:
        lines += _service_lines(svc)
    lines.append("")
    lines.append("Counters are HAProxy's since its last reload.")
    return "\n".join(lines) + "\n"


def _service_lines(svc: dict[str, Any]) -> list[str]:
    """One service of ``status_data``: a blank line, its head, its traffic per revision,
    where revisions run (when hosts or revisions differ), its canary, its containers."""
    lines = [
        "",
        f"service {svc['service']}  replicas {svc['replicas']} per host on "
        f"{', '.join(svc['hosts'])}",
    ]
    if svc["held"]:
        lines.append(f"  HELD: {svc['held']}")
    lines += _traffic_lines(svc)
    if len(svc["on_hosts"]) > 1 or any(len(h["revisions"]) > 1 for h in svc["on_hosts"]):
        for h in svc["on_hosts"]:
            runs = ", ".join(
                f"{rev} ({n['serving']}/{n['running']} serving)"
                for rev, n in h["revisions"].items()
            )
            lines.append(f"  on {h['host']}: {runs or 'nothing runs'}")
    lines += _canary_lines(svc["canary"])
    for c in svc["containers"]:
        weight = "-" if c["weight"] is None else c["weight"]
        lines.append(
            f"    {c['host']:<8} {c['name']:<44} {c['status']:<8} {c['health']:<9} "
            f"{c['published'] or '-':<16} haproxy {c['haproxy']} w={weight} "
            f"sessions={c['sessions']}"
        )
    if not svc["containers"]:
        lines.append("    (no containers)")
    return lines


def _traffic_lines(svc: dict[str, Any]) -> list[str]:
    """The table of requests per revision: the releases, then revisions git no longer has."""
    lines = [
        f"  {'revision':<12} {'weight':>6} {'requests':>9} {'2xx':>8} {'4xx':>6} "
        f"{'5xx':>6} {'5xx%':>6} {'errors':>6} {'avg ms':>7}"
    ]
    rows = [(r["revision"], f"{r['weight']}%", r["traffic"]) for r in svc["releases"]]
    serving = {rev for h in svc["on_hosts"] for rev, n in h["revisions"].items() if n["serving"]}
    # A revision git no longer has may still serve (a rollout held or stopped mid-way).
    rows += [
        (rev, "serves" if rev in serving else "gone", t)
        for rev, t in svc["other_revisions"].items()
    ]
    for rev, weight, t in rows:
        pct = f"{100 * t['5xx'] / t['requests']:.1f}" if t["requests"] else "-"
        lines.append(
            f"  {rev:<12} {weight:>6} {t['requests']:>9} {t['2xx']:>8} "
            f"{t['4xx']:>6} {t['5xx']:>6} {pct:>6} {t['errors']:>6} "
            f"{t['avg_response_ms']:>7}"
        )
    return lines


def _canary_lines(c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return []
    head = f"  canary {c['canary']} vs baseline {c['baseline']}: {c['status'].upper()}"
    if c["status"] == "waiting":
        return [f"{head} ({c['reason']})"]
    lines = [
        f"{head} at step {c['step']}/{len(c['steps'])} (weights {c['steps']}); "
        f"evidence {c['evidence']:.3g} (abort at {c['abort_at']:.3g})",
        f"    {c['reason']}",
    ]
    if c["advice"]:
        lines.append(f"    {c['advice']}")
    lines.append(
        f"    {'side':<9} {'revision':<12} {'requests':>9} {'errors':>7} {'err%':>6} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
    )
    for side, d in c["sides"].items():
        rate = "-" if d["error_rate"] is None else f"{100 * d['error_rate']:.2f}"
        ms = ["-" if d[k] is None else f"{d[k]:.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
        lines.append(
            f"    {side:<9} {d['revision']:<12} {d['requests']:>9} {d['errors']:>7} {rate:>6} "
            f"{ms[0]:>7} {ms[1]:>7} {ms[2]:>7}"
        )
    return lines
