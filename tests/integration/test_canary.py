"""Canary releases judged automatically, for real: the sample app behind the embedded
HAProxy, `hey` loading it, `reconcile apply` run once a second (each pass takes one
look at the canary, as `reconcile watch` does every `analysis.interval`).

- a canary answering 5xx on ~5% of its requests is aborted; afterwards only the
  baseline serves; the only failed requests are the canary's own 500s;
- a good canary goes through every step (20% -> 50% -> 100%) and is promoted;
- a canary with no traffic at all stays paused and says why.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import docker
import pytest
from deploy_support import Deployment, wait_for
from load_support import HAProxyCounters, HeyLoad
from repo_support import edit
from watch_support import Watch

pytestmark = pytest.mark.integration

WEB = "services/web.yaml"
RELEASES = "releases:\n  - revision: v1\n    weight: 100\n"


def canary_releases(revision: str, error_rate: str) -> str:
    """A canary judged on errors alone (`latency: off`): these tests are about the error
    rule, whose power at 5% errors in two short steps is marginal when it shares its
    evidence with the latency test (test_canary_latency.py judges times)."""
    return f"""releases:
  - revision: v1
    weight: 100
  - revision: {revision}
    weight: 0
    env:
      ERROR_RATE: "{error_rate}"
    canary:
      steps:
        - {{weight: 20, min_duration: 2s, min_requests: 40}}
        - {{weight: 50, min_duration: 2s, min_requests: 40}}
        - {{weight: 100, min_duration: 2s, min_requests: 40}}
      analysis:
        confidence: 0.99
        max_error_rate: 0.2
        interval: 1s
        latency: off
"""


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("canary"), docker.from_env())
    code, out = d.apply()
    assert code == 0, out
    yield d
    d.cleanup()


def canary_status(dep: Deployment) -> dict[str, Any]:
    code, raw = dep.cli("status", "-o", "json")
    assert code == 0, raw
    web = next(s for s in json.loads(raw)["services"] if s["service"] == "web")
    return dict(web["canary"] or {})


def drive(dep: Deployment, until: set[str], timeout: float = 90) -> tuple[dict[str, Any], str]:
    """Apply once a second until the canary's status is one of ``until``."""
    outputs = []
    deadline = time.monotonic() + timeout
    while True:
        code, out = dep.apply()
        assert code == 0, out
        outputs.append(out)
        status = canary_status(dep)
        if status.get("status") in until:
            return status, "\n".join(outputs)
        assert time.monotonic() < deadline, (status, outputs[-3:])
        time.sleep(1)


def test_bad_canary_is_aborted_and_the_baseline_takes_all_traffic(dep: Deployment) -> None:
    dep.edit(WEB, RELEASES, canary_releases("v2", "5"), message="canary v2, 5% errors")
    with HAProxyCounters(dep.haproxy) as counters, \
            HeyLoad(dep.url(), concurrency=5, qps=40, max_duration_s=120) as load:
        status, _ = drive(dep, {"aborted", "promoted"})
        report = load.stop()
    print(report.summary())
    print(json.dumps(status, indent=1))
    # what clients cannot see: no retry, redispatch, connection or response error
    assert not HAProxyCounters.nonzero(counters.totals()), counters.totals()
    assert status["status"] == "aborted", status
    assert status["advice"] == "aborted: revert the commit or push a new revision"
    sides = status["sides"]
    assert sides["canary"]["errors"] > 0 and sides["baseline"]["errors"] == 0, sides
    # Response times measured from the request log, per side.
    assert sides["baseline"]["p50_ms"] is not None and sides["canary"]["p99_ms"] is not None
    # Nothing failed but the canary's own 500s: no connection errors, no other status.
    assert report.failed == 0, report.summary()
    assert set(report.statuses) <= {200, 500}, report.summary()
    # Afterwards the baseline serves everything (weights through the runtime API).
    answers = [dep.get()[1] for _ in range(30)]
    assert all("revision=v1" in a for a in answers), answers[:3]
    _, text = dep.cli("status")
    assert "canary v2 vs baseline v1: ABORTED" in text, text


def test_good_canary_is_promoted_through_every_step(dep: Deployment) -> None:
    dep.edit(WEB, canary_releases("v2", "5"), canary_releases("v3", "0"), message="canary v3")
    with HAProxyCounters(dep.haproxy) as counters, \
            HeyLoad(dep.url(), concurrency=5, qps=40, max_duration_s=120) as load:
        status, outputs = drive(dep, {"aborted", "promoted"})
        report = load.stop()
    print(report.summary())
    assert status["status"] == "promoted", status
    assert report.failed == 0 and report.non_2xx == 0, report.summary()
    assert not HAProxyCounters.nonzero(counters.totals()), counters.totals()
    # The canary's server went 0 -> 20 -> 50 -> 100, the baseline's 100 -> 80 -> 50 -> 0.
    moves = re.findall(r"\] ok +\S+: set weight of be_web/\S+-web-v3-\S+ (\d+) -> (\d+)", outputs)
    assert [int(new) for _, new in moves] == [20, 50, 100], moves
    answers = [dep.get()[1] for _ in range(20)]
    assert all("revision=v3" in a for a in answers), answers[:3]
    assert status["advice"] == "promoted: make v3 the only release in git"


def test_canary_without_traffic_is_paused(dep: Deployment) -> None:
    dep.edit(WEB, canary_releases("v3", "0"), canary_releases("v2", "0"), message="canary v2")
    status, _ = drive(dep, {"paused"}, timeout=30)
    assert "no traffic on either side" in status["reason"], status
    assert status["step"] == 1  # never advanced
    _, text = dep.cli("status")
    assert "PAUSED" in text and "no traffic on either side" in text, text


def test_promote_abort_and_retry_by_hand_are_recorded(dep: Deployment) -> None:
    # The paused canary v2 of the previous test.
    code, out = dep.cli("abort", "web")
    assert code == 0, out
    status = canary_status(dep)
    assert status["status"] == "aborted" and "by hand" in status["reason"], status
    assert all("revision=v1" in dep.get()[1] for _ in range(10))
    code, out = dep.cli("retry", "web", repo=False)
    assert code == 0 and "restarted the canary analysis of web" in out, out
    status, _ = drive(dep, {"progressing", "paused"}, timeout=30)
    assert status["step"] == 1, status
    code, out = dep.cli("promote", "web")
    assert code == 0, out
    assert canary_status(dep)["status"] == "promoted"
    assert all("revision=v2" in dep.get()[1] for _ in range(10))
    code, out = dep.cli("history", repo=False)
    assert re.search(r"\baborted\b.*canary v2 of web aborted by hand", out), out
    assert re.search(r"\bretry\b.*canary analysis of web restarted", out), out
    assert re.search(r"\bpromoted\b.*canary v2 of web promoted by hand", out), out


def pass_logged_at(watch: Watch, sha: str) -> float | None:
    """Wall-clock time at which the watcher logged the end of its pass at ``sha``."""
    for e in watch.logs():
        if e.get("event") == "pass" and e.get("commit") == sha:
            stamp = str(e["time"]).replace("Z", "+00:00")
            return datetime.fromisoformat(stamp).timestamp()
    return None


def test_watch_judges_a_canary_on_its_own(dep: Deployment) -> None:
    """`reconcile watch` looks at a running canary every analysis interval (1 s here),
    far more often than its drift interval (60 s): a pushed good canary is promoted
    with no other pass asked for. Its analysis starts at the look one interval after
    the pass that added its servers (not a drift interval later)."""
    watch = Watch(dep, drift=60)
    try:
        edit(dep.repo, WEB, canary_releases("v2", "0"), canary_releases("v3", "0"))
        with HeyLoad(dep.url(), concurrency=5, qps=40, max_duration_s=120) as load:
            sha, _ = watch.push("canary v3, followed by watch")
            added = wait_for(lambda: pass_logged_at(watch, sha), timeout=60,
                             what="the pass that adds the canary's servers")
            wait_for(lambda: canary_status(dep).get("status") not in (None, "waiting")
                     and canary_status(dep).get("canary") == "v3", timeout=15,
                     what="the canary's analysis to start (within one analysis interval)")
            started = time.time() - added
            print(f"\nservers added -> analysis started: {started:.2f}s")
            # One interval (1 s), plus the next pass itself and this test's polling.
            assert started < 5, started
            deadline = time.monotonic() + 90
            while canary_status(dep).get("status") != "promoted":
                assert time.monotonic() < deadline, (canary_status(dep), watch.logs()[-5:])
                time.sleep(1)
            report = load.stop()
        assert report.failed == 0 and report.non_2xx == 0, report.summary()
    finally:
        assert watch.stop() == 0
    assert canary_status(dep)["canary"] == "v3"
