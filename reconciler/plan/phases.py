"""The planner's working state: the actions of each phase, collected as they are planned,
and the servers HAProxy should have once the add phase is done.

Container planning (``plan.containers``) fills the container phases, ``servers`` and
``retiring``; LB planning (``plan.lb``) reads those and fills the HAProxy phases.
``Phases.ordered`` gives the plan's order (see ``plan.planner``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.plan.actions import Action


@dataclass(frozen=True)
class WantedServer:
    """A server HAProxy should have after the add phase."""

    backend: str
    name: str  # HAProxy server name
    container: str
    service: str
    app_host: str
    address: str
    port: int | None  # None: container not started yet
    weight: int
    reason: str


@dataclass
class Phases:
    """Actions per phase, each list in the order it was planned."""

    pulls: list[Action] = field(default_factory=list)
    early_removals: list[Action] = field(default_factory=list)
    starts: list[Action] = field(default_factory=list)
    lb_adds: list[Action] = field(default_factory=list)
    repoints: list[Action] = field(default_factory=list)
    lb_configs: list[Action] = field(default_factory=list)
    certificates: list[Action] = field(default_factory=list)
    weights: list[Action] = field(default_factory=list)
    drains: list[Action] = field(default_factory=list)
    lb_removals: list[Action] = field(default_factory=list)
    removals: list[Action] = field(default_factory=list)
    servers: list[WantedServer] = field(default_factory=list)
    # HAProxy server name of each container that stops serving -> why
    retiring: dict[str, str] = field(default_factory=dict)

    def ordered(self) -> tuple[Action, ...]:
        """Every action, phase after phase."""
        return tuple(
            self.pulls
            + self.early_removals
            + self.starts
            + self.lb_adds
            + self.repoints
            + self.lb_configs
            + self.certificates
            + self.weights
            + self.drains
            + self.lb_removals
            + self.removals
        )
