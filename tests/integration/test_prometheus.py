"""Debian's Prometheus scraping `reconcile watch`, for real: under load on two revisions of
web (the canary answers 500 on some requests), PromQL's per-revision error ratio and p95
equal the reconciler's own numbers (its request-records database, what `status` and the
status page show), and the canary's status, step, evidence and weights are there too."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator

import docker
import pytest
from deploy_support import Deployment, wait_for
from load_support import HeyLoad
from prom_support import Prometheus
from repo_support import edit
from watch_support import Watch

from reconciler.records.histogram import PROMETHEUS_BUCKETS_S
from reconciler.records.query import action_table
from reconciler.records.store import FILENAME

pytestmark = pytest.mark.integration

WEB = "services/web.yaml"
RELEASES = "releases:\n  - revision: v1\n    weight: 100\n"
# The canary stays at its 50% step for the test (long min_duration); its errors (10%)
# are far below max_error_rate, and its latency is judged against a 1 s floor, so it is
# not aborted before both revisions have their requests (a latency abort of a canary that
# is as fast as its baseline, on a loaded machine, would starve v2 of requests).
CANARY = """releases:
  - revision: v1
    weight: 100
  - revision: v2
    weight: 0
    env:
      ERROR_RATE: "10"
    canary:
      steps:
        - {weight: 50, min_duration: 300s, min_requests: 40}
        - {weight: 100, min_duration: 300s, min_requests: 40}
      analysis:
        confidence: 0.9999
        max_error_rate: 0.5
        interval: 1s
        latency: {min_ms: 1000}
"""
ACTION = "GET /prom"
WEB_ACTION = f'service="web",action="{ACTION}"'


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("prom"), docker.from_env())
    edit(d.repo, WEB, RELEASES, CANARY)
    d.edit(WEB, "GREETING: hello from web", "GREETING: hello from web (prom)")
    code, out = d.apply()
    assert code == 0, out
    yield d
    d.cleanup()


def own_numbers(dep: Deployment, since: float) -> dict[str, dict[str, float]]:
    """revision -> requests, errors, p95 ms of ACTION from the records database."""
    rows = [r for r in action_table(dep.state / FILENAME, "web", since) if r["action"] == ACTION]
    if not rows:
        return {}
    return {rev: {"requests": d["requests"], "errors": d["errors"], "p95": d["p95"]}
            for rev, d in rows[0]["revisions"].items()}


def promql(prom: Prometheus) -> dict[str, dict[str, float]]:
    """The same numbers through PromQL."""
    total = prom.by(f"sum by (revision) (reconcile_requests_total{{{WEB_ACTION}}})", "revision")
    errors = prom.by(f'sum by (revision) (reconcile_requests_total{{{WEB_ACTION},'
                     f'code_class=~"5xx|err"}})', "revision")
    p95 = prom.by("1000 * histogram_quantile(0.95, sum by (le, revision) "
                  f"(reconcile_request_duration_seconds_bucket{{{WEB_ACTION}}}))", "revision")
    return {rev: {"requests": n, "errors": errors.get(rev, 0.0), "p95": p95.get(rev, -1.0)}
            for rev, n in total.items()}


def bucket(ms: float) -> tuple[float, float]:
    """The Prometheus bucket (lower, upper bound in ms) that holds ``ms``."""
    bounds = [0.0, *(b * 1000 for b in PROMETHEUS_BUCKETS_S)]
    for lo, hi in itertools.pairwise(bounds):
        if ms <= hi:
            return lo, hi
    return bounds[-1], float("inf")


def test_promql_answers_match_the_reconcilers_numbers(
    dep: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> None:
    watch = Watch(dep, drift=60)
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{watch.metrics_port}"])
    since = time.time() - 5
    try:
        wait_for(lambda: prom.by("up", "job").get("reconcile") == 1, 30, "prometheus scraping")
        wait_for(lambda: prom.query("reconcile_canary_info"), 60, "the canary's metrics")
        with HeyLoad(dep.url("/prom"), concurrency=5, qps=40, max_duration_s=60) as load:
            wait_for(lambda: len(own_numbers(dep, since)) == 2 and min(
                r["requests"] for r in own_numbers(dep, since).values()) >= 150, 60,
                "150 requests of each revision recorded")
            report = load.stop()
        assert report.failed == 0, report.raw

        def settled() -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]] | None:
            own, seen = own_numbers(dep, since), promql(prom)
            same = own.keys() == seen.keys() and all(
                own[r]["requests"] == seen[r]["requests"] and own[r]["errors"] == seen[r]["errors"]
                for r in own)
            return (own, seen) if same else None

        own, seen = wait_for(settled, 30, "PromQL's counts equal to the records database's")
        assert own["v2"]["errors"] > 0 and own["v1"]["errors"] == 0, own
        for rev in ("v1", "v2"):
            ratio = seen[rev]["errors"] / seen[rev]["requests"]
            assert ratio == pytest.approx(own[rev]["errors"] / own[rev]["requests"]), rev
            lo, hi = bucket(own[rev]["p95"])
            assert lo <= seen[rev]["p95"] <= hi, (rev, own[rev]["p95"], seen[rev]["p95"])
        check_canary(prom, dep)
    finally:
        prom.stop()
        assert watch.stop() == 0


def check_canary(prom: Prometheus, dep: Deployment) -> None:
    """The canary's gauges say what its stored state says."""
    info = prom.query("reconcile_canary_info")
    assert [s["metric"]["service"] for s in info] == ["web"], info
    labels = info[0]["metric"]
    assert (labels["baseline"], labels["canary"]) == ("v1", "v2"), labels
    code, out = dep.cli("status", "-o", "json")
    assert code == 0, out
    web = next(s for s in json.loads(out[out.index("{"):])["services"] if s["service"] == "web")
    status = labels["status"]
    assert status == web["canary"]["status"] and status in ("progressing", "aborted"), status
    weights = prom.by('reconcile_canary_weight_percent{service="web"}', "revision")
    assert weights == ({"v1": 50, "v2": 50} if status == "progressing" else {"v1": 100, "v2": 0})
    assert prom.by('reconcile_canary_step{service="web"}', "service") == {"web": 1}
    assert prom.by('reconcile_canary_evidence{service="web"}', "service")["web"] > 0
