"""The canary engine, pure: states across passes and the weights the planner sees."""

from __future__ import annotations

from dataclasses import replace

from support import converge, desired, simulate, spec

from reconciler.canary.engine import CanaryState, evaluate, overlay, undecided
from reconciler.lb.haproxy.stats import info_pid
from reconciler.model import (
    CanaryPolicy,
    CanaryStep,
    DesiredState,
    ObservedState,
    Release,
    ServerStats,
    Service,
)
from reconciler.plan.planner import plan
from reconciler.plan.verify import verify

POLICY = CanaryPolicy(
    steps=(CanaryStep(20, 1000, 10), CanaryStep(100, 1000, 10)), confidence=0.99
)


def fleet(canary: str = "v2") -> DesiredState:
    svc = Service(
        name="web",
        releases=(
            Release("v1", 100, spec("app:v1")),
            Release(canary, 0, spec(f"app:{canary}"), canary=POLICY),
        ),
        replicas=1,
        hosts=("h1",),
    )
    return desired(svc)


def with_counts(world: ObservedState, counts: dict[str, tuple[int, int]], pid: int = 7) -> ObservedState:
    """HAProxy's per-server counters: revision -> (2xx, 5xx) so far."""
    lb = world.lbs[0]
    stats = []
    for s in lb.servers:
        rev = "v1" if "-v1-" in s.server else s.server.split("-web-")[1].split("-")[0]
        ok, bad = counts.get(rev, (0, 0))
        stats.append(ServerStats(s.backend, s.server, "UP", s.weight, 0, ok + bad,
                                 hrsp_2xx=ok, hrsp_5xx=bad))
    return replace(world, lbs=(replace(lb, stats=tuple(stats), worker_pid=pid),))


def weights(d: DesiredState) -> dict[str, int]:
    return {r.revision: r.weight for r in d.services[0].releases}


def test_starts_once_deployed_then_moves_by_steps_and_is_promoted() -> None:
    d = fleet()
    assert evaluate(d, ObservedState(), {}, 0, {}) == {}  # not deployed: declared weights
    world = converge(d)
    states = evaluate(d, with_counts(world, {"v1": (100, 0), "v2": (0, 0)}), {}, 10, {})
    assert states["web"].status == "progressing"
    assert weights(overlay(d, states)) == {"v1": 80, "v2": 20}
    # Traffic at the 20% step, both healthy: the step passes.
    states = evaluate(d, with_counts(world, {"v1": (500, 1), "v2": (100, 0)}), states, 12, {})
    assert weights(overlay(d, states)) == {"v1": 0, "v2": 100}  # step 2 is 100%
    states = evaluate(d, with_counts(world, {"v1": (500, 1), "v2": (200, 0)}), states, 14, {})
    assert states["web"].status == "promoted"
    assert weights(overlay(d, states)) == {"v1": 0, "v2": 100}
    # The planner moves weights only: no container is started or removed.
    promoted = overlay(d, states)
    p = plan(promoted, world)
    assert p.actions, "promotion moved no weight"
    assert {a.kind for a in p.actions} <= {"set-weight", "configure-haproxy"}
    assert any(a.kind == "set-weight" for a in p.actions)
    after = simulate(p, world, promoted)
    assert verify(promoted, after) == ()
    served = {s.server.split("-web-")[1].split("-")[0]: s.weight
              for s in after.lbs[0].servers if s.backend == "be_web"}
    assert served == {"v1": 0, "v2": 100}, served


def test_bad_canary_is_aborted_and_traffic_returns_to_the_declared_weights() -> None:
    d = fleet()
    world = converge(d)
    states = evaluate(d, with_counts(world, {"v1": (0, 0), "v2": (0, 0)}), {}, 0, {})
    states = evaluate(d, with_counts(world, {"v1": (400, 0), "v2": (90, 10)}), states, 5, {})
    assert states["web"].status == "aborted", states["web"].reason
    assert weights(overlay(d, states)) == {"v1": 100, "v2": 0}
    # Survives the store, and stays aborted on later looks.
    again = {"web": CanaryState.from_json(states["web"].to_json())}
    later = evaluate(d, with_counts(world, {"v1": (900, 0), "v2": (90, 10)}), again, 9, {})
    assert later["web"].status == "aborted"


def test_reload_counts_from_zero_and_a_new_canary_starts_afresh() -> None:
    d = fleet()
    world = converge(d)
    states = evaluate(d, with_counts(world, {"v1": (1000, 0), "v2": (50, 0)}), {}, 0, {})
    # A reload: a new worker whose counters are small again; nothing is negative.
    states = evaluate(d, with_counts(world, {"v1": (40, 0), "v2": (5, 0)}, pid=8), states, 1, {})
    assert states["web"].totals == {"v1": [40, 0], "v2": [5, 0]}
    d3 = fleet("v3")
    assert evaluate(d3, with_counts(converge(d3), {}), states, 2, {})["web"].canary == "v3"


def test_info_pid_reads_the_worker() -> None:
    assert info_pid("Name: HAProxy\nPid: 3735\nUptime_sec: 29\n") == 3735
    assert info_pid("") == 0


def test_a_canary_needs_looks_from_its_deploy_until_it_is_decided() -> None:
    """`reconcile watch` looks every analysis interval while ``undecided``: also before
    the analysis started (the pass that adds the servers is followed by a look one
    interval later), and no longer once aborted or promoted."""
    d = fleet()
    svc = d.services[0]
    env = d.environment
    assert undecided(env, svc, None)  # servers not in HAProxy yet, or just added
    world = converge(d)
    (state,) = evaluate(d, with_counts(world, {"v1": (10, 0)}), {}, 0, {}).values()
    for status, needs in [("progressing", True), ("paused", True),
                          ("aborted", False), ("promoted", False)]:
        assert undecided(env, svc, replace(state, status=status)) is needs, status
    # The state of an earlier canary does not count: a new one needs looks.
    other = fleet("v3").services[0]
    assert undecided(env, other, replace(state, status="promoted"))
    # No canary: no looks.
    plain = replace(svc, releases=(svc.releases[0],))
    assert not undecided(env, plain, state)


def test_evaluate_leaves_the_states_it_is_given_as_they_are() -> None:
    d = fleet()
    world = converge(d)
    first = evaluate(d, with_counts(world, {"v1": (100, 0), "v2": (0, 0)}), {}, 10, {})
    before = first["web"].to_json()
    after = evaluate(d, with_counts(world, {"v1": (500, 1), "v2": (100, 0)}), first, 12, {})
    assert first["web"].to_json() == before  # meter, totals, progress, history untouched
    assert after["web"] is not first["web"]
    assert after["web"].to_json() != before and after["web"].updated_at == 12
    # the same look from the same states gives the same result: nothing carried over
    again = evaluate(d, with_counts(world, {"v1": (500, 1), "v2": (100, 0)}), first, 12, {})
    assert again["web"].to_json() == after["web"].to_json()


def ring(world: ObservedState, times: dict[str, list[int]], start: int) -> str:
    """``show events`` text: one request a time, revision -> total times (ms)."""
    servers = {("v1" if "-v1-" in s.server else "v2"): s.server
               for s in world.lbs[0].servers if s.backend == "be_web"}
    lines, n = [], start
    for rev, values in times.items():
        for ms in values:
            lines.append(f"<134>1 - - haproxy 7 - - reqlog be=be_web srv={servers[rev]} st=200 "
                         f"tr={ms} ta={ms} b=10 t=1 id=7.{n} m=GET p=/orders/{n}")
            n += 1
    return "\n".join(lines) + "\n"


def test_a_slower_canary_is_aborted_on_times_from_the_request_log() -> None:
    d = fleet()
    world = converge(d)
    host = world.lbs[0].host
    # Before the canary's first interval: the baseline's earlier times (1-3 ms).
    start = {host: ring(world, {"v1": [1, 2, 3] * 20}, 0)}
    states = evaluate(d, with_counts(world, {"v1": (60, 0)}), {}, 0, start)
    slow = {host: ring(world, {"v1": [1, 2, 3] * 20, "v2": [30] * 20}, 60)}
    states = evaluate(d, with_counts(world, {"v1": (120, 0), "v2": (20, 0)}), states, 5, slow)
    state = states["web"]
    assert state.status == "aborted", state.reason
    assert "latency: action GET /orders/{id} p95 30 ms vs 3 ms" in state.reason, state.reason
    assert state.looks[-1]["weights"] == {"v1": 100, "v2": 0} and state.looks[-1]["step"] == 1
    summary = state.action_summary()["GET /orders/{id}"]
    assert summary["canary"]["p50_ms"] == 30 and summary["baseline"]["requests"] == 120
    again = CanaryState.from_json(state.to_json())
    assert again.looks == state.looks and again.actions == state.actions


def test_latency_off_judges_errors_only() -> None:
    off = replace(POLICY, latency=None)
    d = fleet()
    svc = d.services[0]
    d = replace(d, services=(replace(svc, releases=(svc.releases[0],
                                                    replace(svc.releases[1], canary=off))),))
    world = converge(d)
    host = world.lbs[0].host
    states = evaluate(d, with_counts(world, {"v1": (60, 0)}), {}, 0,
                      {host: ring(world, {"v1": [1, 2, 3] * 20}, 0)})
    slow = {host: ring(world, {"v1": [1, 2, 3] * 20, "v2": [30] * 20}, 60)}
    states = evaluate(d, with_counts(world, {"v1": (120, 0), "v2": (20, 0)}), states, 5, slow)
    assert states["web"].status == "progressing", states["web"].reason
