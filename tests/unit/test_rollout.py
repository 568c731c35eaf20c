"""Rollouts across hosts, pure parts: the planner with frozen hosts, retired hosts,
the order of LB configs, and how app hosts are cut into batches."""

from __future__ import annotations

from dataclasses import replace

from support import converge, desired, service, simulate

from reconciler.model import ObservedState, Rollout
from reconciler.plan.actions import ConfigureLB, RemoveContainer, StartContainer
from reconciler.plan.batches import batches
from reconciler.plan.planner import plan


def fleet(revision: str = "v1", hosts: tuple[str, ...] = ("a1", "a2", "a3")):  # type: ignore[no-untyped-def]
    return desired(
        service("web", [(revision, 100)], replicas=1, hosts=hosts),
        hosts=hosts,
        lb_hosts=("lb1", "lb2"),
    )


def test_frozen_hosts_are_left_exactly_as_they_run() -> None:
    world = converge(fleet("v1"))
    d2 = fleet("v2")
    p = plan(d2, world, frozen={"a2", "a3"})
    touched = {a.host for a in p.actions if isinstance(a, StartContainer | RemoveContainer)}
    assert touched == {"a1"}
    servers = {getattr(a, "server", "") for a in p.actions}
    assert not any(s.startswith(("a2.", "a3.")) for s in servers), p.actions
    # Batch by batch, the same world as all at once.
    after = simulate(p, world, d2)
    p2 = plan(d2, after, frozen={"a3"})
    assert {a.host for a in p2.actions if isinstance(a, StartContainer)} == {"a2"}
    after = simulate(p2, after, d2)
    p3 = plan(d2, after)
    assert {a.host for a in p3.actions if isinstance(a, StartContainer)} == {"a3"}
    assert plan(d2, simulate(p3, after, d2)).empty


def test_every_lb_config_comes_after_every_lb_add() -> None:
    p = plan(fleet("v2"), converge(fleet("v1")))
    kinds = [a.kind for a in p.actions]
    configs = [i for i, a in enumerate(p.actions) if isinstance(a, ConfigureLB)]
    # a release switch: servers added at runtime, every LB host's file written, no reload
    assert not any(a.reloads for a in p.actions), kinds
    # the files written after the adds (then again after the removals), side by side
    assert len(configs) == 4 and configs[1] == configs[0] + 1, kinds
    assert max(i for i, k in enumerate(kinds) if k == "add-server") < configs[0]


def test_retired_host_has_its_containers_drained_then_removed() -> None:
    world = converge(fleet("v1"))
    smaller = fleet("v1", hosts=("a1", "a2"))
    p = plan(smaller, world)
    removals = [a for a in p.actions if isinstance(a, RemoveContainer)]
    assert [a.host for a in removals] == ["a3"]
    assert "no longer used" in removals[0].reason
    drains = [i for i, a in enumerate(p.actions) if a.kind == "drain-server"]
    assert drains and max(drains) < p.actions.index(removals[0])
    assert plan(smaller, simulate(p, world, smaller)).empty


def test_batches_follow_the_limit_and_put_retired_hosts_last() -> None:
    d = fleet()
    obs = ObservedState(hosts=(), lbs=())
    assert batches(d, obs) == [["a1", "a2", "a3"]]
    limited = replace(d, rollout=Rollout(limit=2))
    assert batches(limited, obs) == [["a1", "a2"], ["a3"]]
    world = converge(fleet(hosts=("a1", "a2", "a3", "a4")))
    assert batches(replace(d, rollout=Rollout(limit=1)), world) == [["a1"], ["a2"], ["a3"], ["a4"]]
