"""etcd mode's fence (reconciler.cluster.leader.Fence) with an injected clock, and the
executor's guard (reconciler/apply/steps.py): once the guard raises, no step starts and
the world stays as the last step left it, a safe prefix of the plan."""

from __future__ import annotations

import copy

import pytest
from test_executor_rules import World, fleet

from reconciler.cluster.leader import Fence, margin_for
from reconciler.errors import FencedOut


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_fence_holds_until_the_send_time_plus_ttl_minus_the_margin() -> None:
    clock = Clock()
    fence = Fence(margin_s=1.0, clock=clock)
    with pytest.raises(FencedOut, match="not the leader: not elected yet"):
        fence.check()
    sent = fence.begin()  # the round is sent at 100.0 ...
    clock.now = 102.5  # ... and answered 2.5 s later: the lease still ends at 105 at the latest
    fence.renewed(sent, 5)
    clock.now = 103.99
    fence.check()
    assert fence.holds()
    clock.now = 104.0  # 100 + 5 - 1
    assert not fence.holds()
    with pytest.raises(FencedOut, match=r"not confirmed for 4\.0s \(lease TTL 5s, margin 1\.0s\)"):
        fence.check()


def test_a_pause_past_the_ttl_fences_at_once_by_the_local_clock() -> None:
    clock = Clock()
    fence = Fence(margin_s=margin_for(5), clock=clock)
    fence.renewed(fence.begin(), 5)
    fence.check()
    clock.now += 30  # SIGSTOP for 30 s: no round could renew meanwhile
    with pytest.raises(FencedOut, match="the lease may have expired"):
        fence.check()


def test_an_older_round_never_shortens_the_fence_and_a_dropped_fence_ignores_old_news() -> None:
    clock = Clock()
    fence = Fence(margin_s=1.0, clock=clock)
    old = fence.begin()
    clock.now = 101.0
    new = fence.begin()
    fence.renewed(new, 5)  # holds until 105
    fence.renewed(old, 5)  # answered late: would say 104
    clock.now = 104.5
    assert fence.holds()
    in_flight = fence.begin()
    fence.drop("the lease expired")
    fence.renewed(in_flight, 5)  # began before the drop: its news is old
    with pytest.raises(FencedOut, match="not the leader: the lease expired"):
        fence.check()
    fence.renewed(fence.begin(), 5)  # a round begun after the drop restores it
    fence.check()


def test_margin() -> None:
    assert margin_for(5) == 1.0
    assert margin_for(2) == 0.5
    assert margin_for(60) == 12.0


def _world_state(w: World) -> object:
    return (sorted(w.engines.containers), copy.deepcopy({h: lb.serving() for h, lb in w.lbs.items()}))


def test_once_the_guard_raises_no_step_starts_and_the_world_is_a_safe_prefix() -> None:
    total_calls = 0
    w = World.of(fleet("v2"), before=fleet("v1"))

    def count() -> None:
        nonlocal total_calls
        total_calls += 1

    assert w.run(guard=count, concurrency=1).ok
    fenced_midway = 0
    for k in range(total_calls):
        w = World.of(fleet("v2"), before=fleet("v1"))
        calls = 0
        at_fence: list[object] = []

        def guard(k: int = k, w: World = w, at_fence: list[object] = at_fence) -> None:
            nonlocal calls
            calls += 1
            if calls > k:
                if not at_fence:
                    at_fence.append(_world_state(w))
                raise FencedOut("not the leader: the lease expired")

        result = w.run(guard=guard, concurrency=1)
        assert result.stopped and result.fenced == "not the leader: the lease expired", k
        assert "fenced out: not the leader: the lease expired" in result.notes
        assert at_fence == [_world_state(w)], f"something changed after the guard raised ({k})"
        assert all(st.status == "ok" for st in result.steps)
        fenced_midway += 0 < len(result.steps) < len(w.plan.actions)
        lb = w.lbs["lb1"]
        running = {(c.address, c.port) for c in w.engines.containers.values()}
        assert {(a, p) for *_, a, p in lb.serving()} <= running, k
        assert w.backends_served("lb1") == {"be_api", "be_web"}, k
    assert fenced_midway > 3
