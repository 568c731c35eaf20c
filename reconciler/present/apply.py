"""What ``reconcile apply`` prints: a line per step as it ends, the JSON document of a
pass, the errors and notes after it, and the verdict line. Pure: results in, strings out."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.apply.passresult import PassResult
    from reconciler.apply.results import ApplyResult, StepResult
    from reconciler.model import DesiredState

_MARKS = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}


def step_line(step: StepResult) -> str:
    """One step as it ends: number, outcome, host, what, how long, and why it failed."""
    detail = f" - {step.detail}" if step.detail else ""
    return (
        f"  [{step.step:>3}] {_MARKS[step.status]:<7} {step.action.host}: "
        f"{step.action.describe()} ({step.duration_s:.1f}s){detail}"
    )


def apply_json(desired: DesiredState, done: PassResult) -> str:
    """The pass as one JSON document: environment, commit, run, outcome, every step."""
    res = done.result
    return json.dumps(
        {
            "environment": desired.environment,
            "commit": desired.commit,
            "run": done.run_id,
            "ok": res.ok,
            "failures": res.failures,
            "mismatches": res.mismatches,
            "notes": list(done.plan.notes) + res.notes,
            "steps": [
                {
                    "step": s.step,
                    "status": s.status,
                    "detail": s.detail,
                    "duration_s": round(s.duration_s, 3),
                    **s.action.to_json(),
                }
                for s in res.steps
            ],
        },
        indent=2,
    )


def apply_problems(res: ApplyResult) -> list[str]:
    """The lines (for stderr) after a pass: each failure, the differences between the
    outcome and the plan, and the notes."""
    lines = [f"\nerror: {service}: {why}" for service, why in res.failures.items()]
    if res.mismatches:
        lines.append("\nerror: the outcome differs from the plan:")
        lines += [f"  {m}" for m in res.mismatches]
    lines += [f"\nnote: {note}" for note in res.notes]
    return lines


def apply_summary(done: PassResult) -> str:
    """The last line of a text apply: the run and its verdict."""
    return f"\nrun {done.run_id}: {verdict(done.result)}; see `reconcile history`."


def verdict(res: ApplyResult) -> str:
    """What happened, naming what failed."""
    if res.ok:
        return "applied"
    what = [f"{k} failed" for k in res.failures]
    what += ["the outcome differs from the plan"] if res.mismatches else []
    kept = any(k != "haproxy" for k in res.failures)
    tail = "; a failed service keeps its old release where it failed" if kept else ""
    return f"FAILED ({', '.join(what) or 'stopped'}{tail})"
