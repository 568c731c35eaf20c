"""What one pass returns: its plan, what the executor did, and the run it was recorded as."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.apply.results import ApplyResult
from reconciler.plan.planner import Plan


@dataclass
class PassResult:
    plan: Plan
    result: ApplyResult
    run_id: int
