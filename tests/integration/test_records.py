"""Request records for real: `reconcile watch` streams HAProxy's request log into the
records database while load runs and HAProxy reloads; the per-revision counts equal
HAProxy's own counters (``show stat`` of every worker), the Prometheus counters say the
same, and the records survive a restart of the watcher without being counted twice.
`reconcile apply` records too."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment, wait_for
from load_support import TRAFFIC, HAProxyCounters, HeyLoad
from watch_support import Watch

from reconciler import identity
from reconciler.records.query import action_table, series, totals

RESPONSES = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
TWO_RELEASES = "  - revision: v1\n    weight: 50\n  - revision: v2\n    weight: 50"


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client)
    d.edit("services/web.yaml", "  - revision: v1\n    weight: 100", TWO_RELEASES, "v1 + v2")
    yield d
    d.cleanup()


def revision_of(dep: Deployment) -> dict[str, str]:
    """HAProxy server name -> revision, from the containers."""
    return {identity.server_name("local", c.name): c.labels[identity.REVISION]
            for c in dep.containers("web")}


def haproxy_responses(dep: Deployment, counts: dict[tuple[str, str], dict[str, int]]
                      ) -> dict[str, int]:
    by_rev: dict[str, int] = {}
    names = revision_of(dep)
    for (_be, srv), c in counts.items():
        if srv in names:
            by_rev[names[srv]] = by_rev.get(names[srv], 0) + sum(c[k] for k in RESPONSES)
    return {r: n for r, n in by_rev.items() if n}


def recorded(dep: Deployment, action: str) -> dict[str, int]:
    """revision -> requests of ``action`` in the records database (last hour)."""
    db = dep.state / "requests.db"
    out = {}
    for row in action_table(db, "web", time.time() - 3600):
        if row["action"] == action:
            out = {rev: r["requests"] for rev, r in row["revisions"].items()}
    return out


def prometheus(w: Watch, action: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in re.finditer(r'reconcile_requests_total\{action="([^"]*)",code_class="[^"]*",'
                         r'revision="([^"]*)",service="web"\} ([0-9.e+]+)', w.metrics()):
        if m.group(1) == action:
            out[m.group(2)] = out.get(m.group(2), 0) + int(float(m.group(3)))
    return out


def both_serving(dep: Deployment) -> bool:
    seen = set()
    for _ in range(10):
        try:
            code, body = dep.get("/warmup")
        except OSError:
            return False
        if code == 200:
            seen |= set(re.findall(r"revision=(v\d)", body))
    return seen == {"v1", "v2"}


def test_watch_records_match_haproxy_counters_and_survive_a_restart(dep: Deployment) -> None:
    w = Watch(dep, drift=3.0)
    try:
        wait_for(lambda: both_serving(dep), timeout=90, what="v1 and v2 serving")
        # the collector streams: a request shows in the metrics
        wait_for(lambda: (dep.get("/warmup"), prometheus(w, "GET /warmup"))[1], timeout=30,
                 what="the collector following the request log")
        with HAProxyCounters(dep.haproxy, fields=TRAFFIC) as counters:
            load = HeyLoad(dep.url("/load/17"), concurrency=4, qps=100, max_duration_s=60)
            load.start()
            time.sleep(4)  # the load's length, not a wait for a condition
            dep.haproxy.reload()  # a new worker, a new ring: the collector follows it
            time.sleep(4)
            report = load.stop()
        # the collector let the old worker go (an open stream would keep it alive)
        wait_for(lambda: not dep.haproxy.procs().old_pids, timeout=10,
                 what="the old HAProxy worker gone")
        truth = haproxy_responses(dep, counters.totals("be_web"))
        assert set(truth) == {"v1", "v2"}, truth
        assert sum(truth.values()) == report.responses, (truth, report.summary())
        action = "GET /load/{id}"
        wait_for(lambda: recorded(dep, action) == truth, timeout=30,
                 what=f"records {recorded(dep, action)} == HAProxy {truth}")
        assert prometheus(w, action) == truth
        now = time.time()
        s = series(dep.state / "requests.db", "web", now - 120, now)
        assert s["resolution_s"] == 10 and set(s["revisions"]) >= {"v1", "v2"}
        assert max(s["revisions"]["v1"]["rate"]) > 0
        assert any(p is not None for p in s["revisions"]["v2"]["p95"])
    finally:
        assert w.stop() == 0
    assert recorded(dep, action) == truth  # kept on disk

    w2 = Watch(dep, drift=3.0)
    try:
        wait_for(lambda: (dep.get("/warmup"), prometheus(w2, "GET /warmup"))[1], timeout=60,
                 what="the second watcher following the request log")
        for _ in range(30):
            assert dep.get("/after/1")[0] == 200
        wait_for(lambda: sum(recorded(dep, "GET /after/{id}").values()) == 30, timeout=30,
                 what=f"30 requests recorded after the restart: {recorded(dep, 'GET /after/{id}')}")
        assert recorded(dep, action) == truth  # nothing counted twice
    finally:
        assert w2.stop() == 0


def test_apply_records_the_ring_once_per_request(dep: Deployment) -> None:
    code, out = dep.apply()
    assert code == 0, out
    for _ in range(20):
        assert dep.get("/oneshot")[0] == 200
    for _ in range(2):  # the second pass finds nothing new in the ring
        code, out = dep.apply()
        assert code == 0, out
    now = time.time()
    got = totals(dep.state / "requests.db", "web", now - 600, now + 10)
    assert sum(sum(c.values()) for c in got.values()) >= 20
    assert sum(recorded(dep, "GET /oneshot").values()) == 20
