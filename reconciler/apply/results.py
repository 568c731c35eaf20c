"""What a run of the executor reports: one result per step, and the run's result.

``Ledger`` is the run's result while it is being built, shared by the step loop and
the handlers (steps of one kind run in threads, one per host).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from reconciler.plan.actions import Action

Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class StepResult:
    step: int
    action: Action
    status: Status
    detail: str
    duration_s: float


@dataclass
class ApplyResult:
    steps: list[StepResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # service (or "haproxy") -> why
    aborted: bool = False
    stopped: bool = False  # asked to stop (SIGTERM): the steps so far are a safe prefix
    fenced: str | None = None  # why the guard stopped the run (no longer the leader); stopped too
    notes: list[str] = field(default_factory=list)  # e.g. why a rollout stopped early
    # what the world shows that the plan did not promise (reconciler.plan.verify), after the pass
    mismatches: list[str] = field(default_factory=list)
    reloads: int = 0  # confirmed HAProxy reloads (on every LB host together)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.aborted and not self.mismatches


class StepSkipped(Exception):
    """A step with nothing to do because the steps it follows were skipped; its text
    says why."""


class Ledger:
    """The result of the run being built and the lock that guards it: a handler
    checks and records failures under ``lock`` (a service failing on one host while
    it starts on another must not keep a container)."""

    def __init__(self) -> None:
        self.result = ApplyResult()
        self.lock = threading.RLock()

    def failed(self, service: str | None) -> bool:
        return service is not None and service in self.result.failures

    def fail(self, key: str, why: str) -> bool:
        """Record ``why`` as the failure of ``key`` (a service, or "haproxy") unless one
        is recorded already; True when this is its first."""
        with self.lock:
            if key in self.result.failures:
                return False
            self.result.failures[key] = why
            return True

    def failed_services(self) -> list[str]:
        return sorted(k for k in self.result.failures if k != "haproxy")
