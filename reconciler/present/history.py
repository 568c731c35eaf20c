"""The history as operators read it: the list of runs, and the steps of one run."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.present.status import looks_note
from reconciler.store import Run


def runs_text(runs: Sequence[Run]) -> str:
    """One line a run: id, start, environment, commit, duration, status, summary."""
    lines = []
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at))
        took = f"{r.finished_at - r.started_at:6.1f}s" if r.finished_at else "   ... "
        lines.append(
            f"run {r.id:>4}  {when}  {r.environment:<12} {r.commit[:7]}  {took}  "
            f"{r.status:<13} {r.summary}{looks_note(r)}\n"
        )
    return "".join(lines)


def runs_json(runs: Sequence[Run]) -> str:
    return json.dumps([r.__dict__ for r in runs], indent=2) + "\n"


def run_text(steps: Sequence[Mapping[str, Any]], failures: Mapping[str, str]) -> str:
    """The steps of one run (status, host, what, why, detail) and its failures."""
    out = []
    for st in steps:
        out.append(
            f"[{st['step']:>3}] {st['status']:<7} {st['host']:<10} "
            f"{st['description']} ({st['duration_s']:.1f}s)\n"
        )
        out.append(f"      because {st['reason']}\n")
        if st["detail"]:
            out.append("      " + st["detail"].replace("\n", "\n      ") + "\n")
    for service, why in failures.items():
        out.append(f"failed: {service}: " + why.replace("\n", "\n      ") + "\n")
    return "".join(out)


def run_json(
    run_id: int,
    plan: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    failures: Mapping[str, str],
) -> str:
    doc = {"run": run_id, "plan": plan, "steps": steps, "failures": failures}
    return json.dumps(doc, indent=2) + "\n"
