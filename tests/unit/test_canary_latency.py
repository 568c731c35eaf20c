"""The canary's latency test: its guarantee (simulated, fixed seeds), per-action
detection, thresholds fixed before each interval, and how it joins the error test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from latency_sim import MIXED, ONE, STEPS, Traffic, ours

from reconciler.canary.decision import Analysis, Counts, Progress, Step
from reconciler.canary.latency import ALL, LatencyEvidence, LatencySettings, Sample
from reconciler.canary.sides import add_to_summary, split, summarize
from reconciler.desired.manifests import load_manifests, resolve
from reconciler.lb.haproxy.requestlog import Request
from reconciler.model import ActionSpec, LatencyPolicy
from reconciler.records.actions import ActionTable

ODDS = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


def aborted(traffic: Traffic, runs: int, seed: int, confidence: float = 0.9) -> float:
    rng = np.random.default_rng(seed)
    return sum(ours(rng, traffic, confidence=confidence)[0] == "abort" for _ in range(runs)) / runs


def test_a_canary_exactly_max_slowdown_slower_is_aborted_at_most_alpha_of_the_time() -> None:
    # The boundary of the null (times x 1.2 with max_slowdown 1.2), at alpha = 10% so a
    # broken bound shows in 120 runs; 21 looks each.
    assert aborted(Traffic(ONE, 1.2), 120, seed=3) <= 0.1
    assert aborted(Traffic(MIXED), 60, seed=4) <= 0.1


def test_a_slower_canary_is_caught_and_so_is_one_slower_action() -> None:
    assert aborted(Traffic(ONE, 1.5), 100, seed=5, confidence=0.99) >= 0.95
    # orders.show (30% of requests) 2x slower, every other action as fast.
    assert aborted(Traffic(MIXED, 2.0, "orders.show"), 60, seed=6, confidence=0.99) >= 0.95


def test_the_message_names_the_one_slower_action_with_its_times() -> None:
    rng = np.random.default_rng(7)
    progress = Progress(STEPS, Analysis())
    traffic = Traffic(MIXED, 3.0, "search")
    for _ in range(30):
        samples = traffic.interval(rng, 50)
        c = sum(len(s.canary) for s in samples.values())
        b = sum(len(s.baseline) for s in samples.values())
        progress.observe(Counts(c, 0), Counts(b, 0), 10, samples)
        verdict = progress.verdict()
        if verdict.action == "abort":
            break
    assert verdict.action == "abort", verdict
    assert "latency: action search p95 " in verdict.reason, verdict.reason
    assert " ms vs " in verdict.reason and "(evidence " in verdict.reason, verdict.reason


def test_each_threshold_is_fixed_before_the_interval_it_judges() -> None:
    lat = LatencyEvidence(LatencySettings(min_baseline=5), ODDS)
    lat.observe({"a": Sample([], [10] * 100)})  # the earlier intervals: p95 10 ms
    assert lat.threshold(ALL) == 10
    # An interval where everything takes 1000 ms: judged against 10 ms (all slow on
    # both sides), not against a threshold that already saw these times.
    lat.observe({"a": Sample([1000] * 50, [1000] * 100)})
    assert lat.tracks[ALL].slow == [50, 50, 100, 100]
    assert lat.threshold(ALL) == 1000  # the next interval's


def test_min_ms_keeps_noise_of_a_fast_service_out() -> None:
    lat = LatencyEvidence(LatencySettings(min_baseline=5, min_ms=2), ODDS)
    lat.observe({"a": Sample([], [0, 1] * 50)})
    assert lat.slots == ["a"] and lat.threshold("a") == 2.0  # p95 1 ms, floored at 2
    assert lat.threshold(ALL) == 2.0
    lat.observe({"a": Sample([2] * 100, [0] * 100)})  # 2 ms vs 0 ms: not slower
    assert lat.value() == 1.0


def test_slots_are_bounded_declared_actions_first_and_survive_json() -> None:
    lat = LatencyEvidence(LatencySettings(min_baseline=1, action_slots=2), ODDS, ("z",))
    lat.observe({n: Sample([1], [1]) for n in ("a", "b", "z")})
    assert lat.slots == ["z", "a"] and set(lat.tracks) == {ALL, "z", "a"}
    again = LatencyEvidence(lat.settings, ODDS, ("z",))
    again.load(lat.to_dict())
    assert again.to_dict() == lat.to_dict()


def test_errors_and_latency_share_one_bound_and_latency_off_is_errors_alone() -> None:
    steps = (Step(50, 60, 10),)
    on, off = Progress(steps), Progress(steps, Analysis(latency=None))
    for p in (on, off):
        p.observe(Counts(100, 10), Counts(100, 0), 10)
    assert on.value == 0.5 * off.value + 0.5  # no times: the latency half stays at 1
    restored = Progress.from_dict(steps, Analysis(), on.to_dict())
    assert restored.value == on.value


def test_records_are_split_by_action_and_side_and_4xx_count_on_request() -> None:
    def req(server: str, status: int, ms: int, path: str) -> Request:
        return Request("be_web", server, status, ms, ms, 1, ms, method="GET", path=path)

    records = [
        req("c1", 200, 30, "/orders/1"),
        req("c1", 404, 2, "/orders/2"),
        req("b1", 200, 3, "/orders/3"),
        req("b1", 503, 1, "/"),
        req("x", 200, 9, "/"),
    ]
    table = ActionTable((ActionSpec("orders.show", "/orders/{id}", "GET"),))
    sides = {"c1": "canary", "b1": "baseline"}
    look = split(records, "be_web", sides, table, errors_4xx=False)
    assert look.samples["orders.show"] == Sample([30, 2], [3])
    assert look.errors == {"orders.show": [0, 0], "GET /": [0, 1]}
    assert split(records, "be_web", sides, table, errors_4xx=True).errors["orders.show"] == [1, 0]
    summary: dict[str, Any] = {}
    add_to_summary(summary, look)
    assert summarize(summary)["orders.show"]["canary"]["p95_ms"] == 30


def _web_canary(analysis: str) -> Any:
    root = Path(__file__).resolve().parents[2] / "sample-repo"
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.yaml")}
    web = (
        files["services/web.yaml"]
        .decode()
        .replace(
            "releases:\n  - revision: v1\n    weight: 100\n",
            "releases:\n  - revision: v1\n    weight: 100\n  - revision: v2\n    weight: 0\n"
            f"    canary:\n      steps: [{{weight: 50}}]\n      analysis: {analysis}\n",
        )
    )
    files["services/web.yaml"] = web.encode()
    env = next(n.split("/")[1][:-5] for n in files if n.startswith("environments/"))
    state = resolve(load_manifests(files.items()), env, "c" * 40)
    svc = next(s for s in state.services if s.name == "web")
    return svc.releases[1].canary


def test_the_manifest_says_what_slower_means_or_turns_it_off() -> None:
    assert _web_canary("{}").latency == LatencyPolicy(0.95, 1.2, 2.0)
    assert _web_canary("{}").errors_4xx is False
    given = _web_canary("{errors_4xx: true, latency: {quantile: 0.99, max_slowdown: 2, min_ms: 5}}")
    assert given.latency == LatencyPolicy(0.99, 2.0, 5.0) and given.errors_4xx is True
    assert _web_canary("{latency: off}").latency is None
    assert _web_canary("{latency: {enabled: false}}").latency is None
