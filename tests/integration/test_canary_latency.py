"""Canaries judged on response times, for real: the sample app behind the embedded
HAProxy, `hey` loading it, `reconcile apply` once a second (each pass one look, as
`reconcile watch` does every `analysis.interval`). No request fails in any of them:
only times tell the canaries apart.

- a canary ~10x slower than its baseline (DELAY_MS) is aborted, with the times named;
- a canary slower on one declared action only (DELAY_PATHS) is aborted, naming it;
- an identical canary is promoted, with a latency floor (``min_ms``) of 10 ms: on a
  shared machine, CPU scheduling can make one of two identical containers really slower
  by a few milliseconds (seen: p95 5 vs 2 ms with a busy process on one of the 2 CPUs,
  aborted with evidence 2.3e3), which the default floor of 2 ms rightly counts; the
  floor is the operator's "differences below this do not matter".
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from deploy_support import Deployment
from load_support import HeyLoad

pytestmark = pytest.mark.integration

WEB = "services/web.yaml"
RELEASES = "releases:\n  - revision: v1\n    weight: 100\n"
ACTIONS = 'actions:\n  - {name: orders.show, path: "/orders/{id}", method: GET}\n'


def canary(revision: str, env: str = "", min_ms: int = 2) -> str:
    return f"""releases:
  - revision: v1
    weight: 100
  - revision: {revision}
    weight: 0
    env:
      GREETING: "canary {revision}"{env}
    canary:
      steps:
        - {{weight: 50, min_duration: 6s, min_requests: 100}}
      analysis:
        interval: 1s
        latency: {{quantile: 0.95, max_slowdown: 1.2, min_ms: {min_ms}}}
{ACTIONS}"""


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("latency"), docker.from_env())
    d.edit(WEB, RELEASES, RELEASES + ACTIONS, message="declare orders.show")
    code, out = d.apply()
    assert code == 0, out
    yield d
    d.cleanup()


def canary_status(dep: Deployment) -> dict[str, Any]:
    code, raw = dep.cli("status", "-o", "json")
    assert code == 0, raw
    web = next(s for s in json.loads(raw)["services"] if s["service"] == "web")
    return dict(web["canary"] or {})


def judge(dep: Deployment, old: str, new: str, timeout: float = 60) -> dict[str, Any]:
    """Push ``new`` in place of ``old`` and apply once a second, under load on two
    actions ("/" and orders.show), until the canary is aborted or promoted."""
    dep.edit(WEB, old, new, message="canary")
    with HeyLoad(dep.url("/"), concurrency=2, qps=50, max_duration_s=90) as home, \
            HeyLoad(dep.url("/orders/17"), concurrency=2, qps=50, max_duration_s=90) as orders:
        deadline = time.monotonic() + timeout
        while True:
            code, out = dep.apply()
            assert code == 0, out
            status = canary_status(dep)
            if status.get("status") in ("aborted", "promoted"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(1)
        reports = [home.stop(), orders.stop()]
    for r in reports:
        print(r.summary())
        assert r.failed == 0 and r.non_2xx == 0, r.summary()  # only times differ
    print(status["reason"])
    print(json.dumps({k: status.get(k) for k in ("evidence_parts", "actions")}, indent=1))
    print([(round(x["evidence"], 2), x["step"]) for x in status["looks"]])
    return status


def test_a_canary_ten_times_slower_is_aborted_naming_the_times(dep: Deployment) -> None:
    status = judge(dep, RELEASES + ACTIONS, canary("v2", '\n      DELAY_MS: "10"'))
    assert status["status"] == "aborted", status
    m = re.search(r"latency: p95 ([\d.]+) ms vs ([\d.]+) ms[;(]", status["reason"])
    assert m, status["reason"]
    assert float(m[1]) >= 10 and float(m[1]) > float(m[2]), status["reason"]
    assert status["sides"]["canary"]["errors"] == 0, status["sides"]
    # The evidence over time, a look a pass, and each action's times by side.
    looks = status["looks"]
    # (weights: those the look left in effect; aborted: back to the declared ones)
    assert looks and looks[-1]["evidence"] >= 100 and looks[-1]["weights"] == {"v1": 100, "v2": 0}
    # (medians: a busy machine makes the baseline's p95 noisy, never its p50)
    orders = status["actions"]["orders.show"]
    assert orders["canary"]["p50_ms"] >= 10 > 2 * orders["baseline"]["p50_ms"], orders
    assert all("revision=v1" in dep.get()[1] for _ in range(10))


def test_a_canary_slower_on_one_action_is_aborted_naming_it(dep: Deployment) -> None:
    status = judge(dep, canary("v2", '\n      DELAY_MS: "10"'),
                   canary("v3", '\n      DELAY_PATHS: "/orders=20"'))
    assert status["status"] == "aborted", status
    assert re.search(r"latency: action orders\.show p95 [\d.]+ ms vs [\d.]+ ms \(evidence",
                     status["reason"]), status["reason"]
    home, orders = status["actions"]["GET /"], status["actions"]["orders.show"]
    assert orders["canary"]["p50_ms"] >= 20, orders
    assert home["canary"]["p50_ms"] < 5, home  # the other action is as fast


def test_an_identical_canary_is_promoted(dep: Deployment) -> None:
    status = judge(dep, canary("v3", '\n      DELAY_PATHS: "/orders=20"'), canary("v2", min_ms=10))
    assert status["status"] == "promoted", status
    assert status["evidence"] < 100, status
    assert all("revision=v2" in dep.get()[1] for _ in range(10))
