"""The outcome check (reconciler.plan.verify): each way a world can differ from its promise."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support import converge, desired, service

from reconciler.model import Instance, ObservedState, ServerStats
from reconciler.plan.verify import verify


def world_and_desired() -> tuple[ObservedState, object]:
    d = desired(service("web", replicas=2), service("api", replicas=1))
    return converge(d), d


def with_lb(world: ObservedState, **changes: object) -> ObservedState:
    return replace(world, lbs=(replace(world.lbs[0], **changes),))


def test_a_converged_world_holds() -> None:
    world, d = world_and_desired()
    assert verify(d, world) == ()  # type: ignore[arg-type]


def _web(world: ObservedState, i: int = 0):  # type: ignore[no-untyped-def]
    return sorted((s for s in world.lbs[0].servers if s.backend == "be_web"),
                  key=lambda s: s.server)[i]


CASES = {
    "server on a port its container does not publish": (
        lambda w: with_lb(w, servers=tuple(
            replace(s, port=1) if s == _web(w) else s for s in w.lbs[0].servers)),
        "points at 10.0.0.1:1 but its container publishes 10.0.0.1:",
    ),
    "container gone (server left DOWN on a dead port)": (
        lambda w: replace(w, hosts=(replace(w.hosts[0], containers=tuple(
            c for c in w.hosts[0].containers if not _web(w).server.endswith(c.name))),)),
        "where no running managed container answers",
    ),
    "container exited": (
        lambda w: replace(w, hosts=(replace(w.hosts[0], containers=tuple(
            replace(c, status="exited") if _web(w).server.endswith(c.name) else c
            for c in w.hosts[0].containers)),)),
        "where no running managed container answers",
    ),
    "server DOWN": (
        lambda w: with_lb(w, stats=(ServerStats("be_web", _web(w).server, "DOWN", 100, 0, 0,
                                                check_status="L4CON"),)),
        "DOWN, health check L4CON; want UP",
    ),
    "wrong weight": (
        lambda w: with_lb(w, servers=tuple(
            replace(s, weight=7) if s == _web(w) else s for s in w.lbs[0].servers)),
        "weight 7, want 100",
    ),
    "left drained": (
        lambda w: with_lb(w, servers=tuple(
            replace(s, admin=("drain",)) if s == _web(w) else s for s in w.lbs[0].servers)),
        "state drain, want ready",
    ),
    "config file without a server": (
        lambda w: with_lb(w, config_servers=tuple(
            x for x in w.lbs[0].config_servers if x[1] != _web(w).server)),
        "in HAProxy but not in its config file",
    ),
    "desired server missing": (
        lambda w: with_lb(w, servers=tuple(s for s in w.lbs[0].servers if s != _web(w)),
                          config_servers=tuple(x for x in w.lbs[0].config_servers
                                               if x[1] != _web(w).server)),
        "missing (its container on h1)",
    ),
    "HAProxy not running": (
        lambda w: with_lb(w, running=False),
        "HAProxy is not running",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_difference_is_named(case: str) -> None:
    world, d = world_and_desired()
    perturb, expected = CASES[case]
    found = verify(d, perturb(world))  # type: ignore[arg-type]
    assert found, case
    assert any(expected in str(m) for m in found), [str(m) for m in found]


def test_a_server_of_a_removed_release_is_left_over() -> None:
    world, d = world_and_desired()
    smaller = replace(d, services=(replace(d.services[0], replicas=1), d.services[1]))  # type: ignore[attr-defined]
    found = [str(m) for m in verify(smaller, world)]
    assert any("left in HAProxy, not desired" in m for m in found), found


def test_skipped_services_and_frozen_hosts_are_left_as_they_run() -> None:
    world, d = world_and_desired()
    gone = with_lb(world, servers=tuple(s for s in world.lbs[0].servers
                                        if s.backend != "be_web"),
                   config_servers=tuple(x for x in world.lbs[0].config_servers
                                        if x[0] != "be_web"))
    assert verify(d, gone)  # type: ignore[arg-type]
    assert verify(d, gone, skip={"web"}) == ()  # type: ignore[arg-type]
    assert verify(d, gone, frozen={"h1"}) == ()  # type: ignore[arg-type]


def test_instance_names_its_containers() -> None:
    world, d = world_and_desired()
    other = replace(d, instance=Instance(name="other"))  # type: ignore[type-var]
    found = [str(m) for m in verify(other, world)]
    assert any("missing" in m and "other-prod-web" in m for m in found), found
