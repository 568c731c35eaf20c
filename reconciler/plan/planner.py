"""The planner: desired x observed -> Plan. A pure function: no I/O, no clock, no globals.

Order of a plan (each phase over all hosts, sorted, so one HAProxy reload adds every new
server and one removes every retired one):

1. pull missing images;
2. remove dead containers whose deterministic name a new container needs;
3. start new containers (each waits for its health gate);
4. add the new servers to HAProxy (one reload per LB host, only when structure changed;
   every LB host's new servers first, then their configs, so the executor can verify
   each LB host's config before it switches any); point servers whose container was
   replaced (or moved) at its published address through the runtime API; then set
   weights through the runtime API (no reload) and write addresses and weights into the
   config;
5. drain retired servers and remove them through the runtime API (no reload);
6. stop and remove retired containers.

A change to anything that defines a container gives a new container (new config hash,
new name) next to the old one; nothing is updated in place.

Container planning lives in ``plan.containers``, LB planning in ``plan.lb``; both fill
``plan.phases.Phases``, which gives the order above.

Rollouts across hosts come from calling ``plan`` once per batch with the app hosts of
later batches ``frozen``: their containers and their servers in HAProxy are left exactly
as they are. An observed app host that is not in the desired state (removed from the
inventory or from every service) has all of the environment's containers retired.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from reconciler import identity
from reconciler.model import DesiredState, ObservedState
from reconciler.plan.acme import plan_acme
from reconciler.plan.actions import Action
from reconciler.plan.containers import plan_containers
from reconciler.plan.lb import plan_lb
from reconciler.plan.phases import Phases


@dataclass(frozen=True)
class Plan:
    environment: str
    commit: str
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions


def plan(
    desired: DesiredState,
    observed: ObservedState,
    held: Mapping[str, str] | None = None,
    frozen: Collection[str] = (),
) -> Plan:
    """The ordered actions that take ``observed`` to ``desired``. Same inputs, same plan.

    ``held``: services left exactly as they run (service -> why), e.g. because their
    apply already failed at this commit; they get no action, only a note.
    ``frozen``: app hosts left exactly as they run (containers and HAProxy servers).
    """
    ph = Phases()
    held = held or {}
    plan_containers(ph, desired, observed, held, frozen)
    held_backends = {identity.backend_name(name) for name in held}
    for lb in desired.loadbalancers:
        for lb_host in lb.hosts:
            plan_lb(ph, desired, lb, observed.lb(lb_host), held_backends, set(frozen))
    plan_acme(ph, desired, observed)
    notes = tuple(f"service {name} held: {why}" for name, why in sorted(held.items()))
    return Plan(
        environment=desired.environment, commit=desired.commit, actions=ph.ordered(), notes=notes
    )


def count_by_kind(actions: Iterable[Action]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for a in actions:
        counts[a.kind] += 1
    return dict(sorted(counts.items()))
