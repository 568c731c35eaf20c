"""A canary's request log records, per action and per side: what the latency test
needs from one look, and the per-action summary ``status`` shows. Pure.

Each record of the canary's backend is named by its action (the service's declared
``actions``, else method and path template: ``records.actions.ActionTable``, whose
admitted names the caller keeps across looks so a name means the same in every look).
Records of servers that belong to neither side (another release, a server gone) and
records without a total time (``%Ta`` -1: never answered) are left out of the times;
an error is a 5xx, a request HAProxy answered without a response (status -1 or 0),
or, with ``errors_4xx``, a 4xx.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.canary.latency import Sample, quantile
from reconciler.lb.haproxy.requestlog import Request
from reconciler.records.actions import ActionTable

MAX_SUMMARY_TIMES = 200  # recent times per action and side for the summary's p50/p95


def is_error(status: int, errors_4xx: bool) -> bool:
    """A response the canary analysis counts as failed (module doc)."""
    return status <= 0 or status >= 500 or (errors_4xx and 400 <= status < 500)


@dataclass
class Look:
    """One look's records of both sides, by action."""

    samples: dict[str, Sample] = field(default_factory=dict)
    requests: dict[str, list[int]] = field(default_factory=dict)  # action -> [c, b]
    errors: dict[str, list[int]] = field(default_factory=dict)  # action -> [c, b]


def split(
    requests: Iterable[Request],
    backend: str,
    side_of: Mapping[str, str],
    table: ActionTable,
    errors_4xx: bool,
) -> Look:
    """The records of ``backend`` by action and side; ``side_of``: server -> "canary"
    or "baseline"."""
    times: dict[str, tuple[list[int], list[int]]] = {}
    look = Look()
    for r in requests:
        side = side_of.get(r.server)
        if r.backend != backend or side is None:
            continue
        action = table.name(r.method, r.path)
        i = 0 if side == "canary" else 1
        look.requests.setdefault(action, [0, 0])[i] += 1
        look.errors.setdefault(action, [0, 0])[i] += is_error(r.status, errors_4xx)
        if r.total_ms >= 0:
            times.setdefault(action, ([], []))[i].append(r.total_ms)
    look.samples = {a: Sample(c, b) for a, (c, b) in times.items()}
    return look


def add_to_summary(summary: dict[str, Any], look: Look) -> None:
    """Fold one look into ``summary`` (action -> side -> {"requests", "errors",
    "times"}), kept as JSON in the canary's state; times bounded per action and side."""
    for action, requests in look.requests.items():
        sample = look.samples.get(action, Sample())
        for i, side in enumerate(("canary", "baseline")):
            times = list(sample.canary if i == 0 else sample.baseline)
            entry = summary.setdefault(action, {}).setdefault(
                side, {"requests": 0, "errors": 0, "times": []}
            )
            entry["requests"] += requests[i]
            entry["errors"] += look.errors[action][i]
            entry["times"] = (entry["times"] + times)[-MAX_SUMMARY_TIMES:]


def summarize(summary: Mapping[str, Any]) -> dict[str, Any]:
    """action -> side -> requests, errors, error rate, p50 and p95 (ms, recent)."""
    out: dict[str, Any] = {}
    for action, sides in sorted(summary.items()):
        out[action] = {}
        for side, e in sides.items():
            req, err = int(e["requests"]), int(e["errors"])
            out[action][side] = {
                "requests": req,
                "errors": err,
                "error_rate": err / req if req else None,
                "p50_ms": quantile(e["times"], 0.50),
                "p95_ms": quantile(e["times"], 0.95),
            }
    return out
