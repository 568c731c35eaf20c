"""`reconcile watch` against a local bare repository, the real engine and HAProxy.

One watcher process follows the branch through a sequence of pushes: the first deploy, a
new release (time from push to first response of the new revision), drift repaired, a
failing commit attempted once, a good commit after it, metrics, and SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment, free_port, wait_for
from fault_support import assert_servers_point_at_containers
from watch_support import Watch


def runs_of(dep: Deployment, sha: str) -> list[str]:
    db = sqlite3.connect(dep.state / "history.sqlite")
    try:
        return [r[0] for r in db.execute("SELECT status FROM runs WHERE commit_id = ? "
                                         "ORDER BY id", (sha,))]
    finally:
        db.close()


def serving(dep: Deployment, text: str) -> bool:
    try:
        code, body = dep.get("/")
    except OSError:
        return False
    return code == 200 and text in body


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client)
    # two web replicas: one stopped by hand leaves the other serving
    d.edit("environments/staging.yaml", "replicas: 1", "replicas: 2", "2 replicas")
    yield d
    d.cleanup()


def test_watch_follows_the_branch_repairs_drift_and_stops_cleanly(
        dep: Deployment, docker_client: docker.DockerClient) -> None:
    w = Watch(dep)
    try:
        wait_for(lambda: serving(dep, "revision=v1"), timeout=60, what="first deploy")
        assert w.healthz() == 200

        # a new release: time from the push returning to the first response of v2
        (dep.repo / "services" / "web.yaml").write_text(
            (dep.repo / "services" / "web.yaml").read_text().replace("revision: v1",
                                                                     "revision: v2"))
        sha, pushed = w.push("web v2")
        wait_for(lambda: serving(dep, "revision=v2"), timeout=60, what="v2 served")
        print(f"\npush -> first v2 response: {time.monotonic() - pushed:.2f}s")
        wait_for(lambda: f'reconcile_last_applied_commit_info{{commit="{sha}"}} 1.0'
                 in w.metrics(), timeout=30, what="metrics of the applied commit")
        assert 'reconcile_release_weight_percent{revision="v2",service="web"} 100.0' \
            in w.metrics()

        # drift: a managed container stopped by hand is repaired within a drift interval
        wait_for(lambda: "ok" in runs_of(dep, sha), timeout=30, what="the v2 run finished")
        victim = dep.containers("web")[0]
        victim.stop(timeout=1)
        wait_for(lambda: all(c.status == "running" for c in dep.containers("web"))
                 and len(dep.containers("web")) == 2, timeout=30, what="drift repaired")
        for _ in range(20):
            assert serving(dep, "revision=v2")
        def drift_count() -> float:
            line = [x for x in w.metrics().splitlines()
                    if x.startswith("reconcile_drift_detected_total ")]
            return float(line[0].split()[1])

        wait_for(lambda: drift_count() >= 1, timeout=10, what="drift counted")

        # a failing commit is attempted once, not in a loop
        web = dep.repo / "services" / "web.yaml"
        web.write_text(web.read_text().replace("revision: v2\n    weight: 100",
                                               "revision: v3\n    weight: 100\n"
                                               "    env: {FAIL_HEALTH: \"1\"}"))
        bad, _ = w.push("web v3, unhealthy")
        wait_for(lambda: "failed" in runs_of(dep, bad), timeout=90, what="the failed attempt")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert runs_of(dep, bad).count("failed") == 1
            assert serving(dep, "revision=v2")
            time.sleep(0.5)
        assert runs_of(dep, bad).count("failed") == 1, runs_of(dep, bad)

        # the next good commit applies
        web.write_text(web.read_text().replace("revision: v3", "revision: v1").replace(
            '\n    env: {FAIL_HEALTH: "1"}', ""))
        good, _ = w.push("back to v1")
        wait_for(lambda: serving(dep, "revision=v1"), timeout=60, what="the good commit")
        wait_for(lambda: "ok" in runs_of(dep, good), timeout=30, what="the good run")
    finally:
        code = w.stop()
    assert code == 0
    events = [e.get("event") for e in w.logs()]
    assert "start" in events and "stop" in events and "pass" in events
    # after the stop, HAProxy points only at running containers: every server, in any
    # state (a DOWN one left on a removed container included), runtime and config file
    assert any(s.status.startswith("UP") for s in dep.haproxy.server_stats())
    assert_servers_point_at_containers(dep, docker_client)


def test_detect_only_reports_drift_and_changes_nothing(
        dep: Deployment, docker_client: docker.DockerClient) -> None:
    code, out = dep.apply()
    assert code == 0, out
    w = Watch(dep, "--detect-only", drift=1.0)
    try:
        wait_for(lambda: "reconcile_drift_pending 0.0" in w.metrics(), timeout=30,
                 what="the watcher's first look")
        victim = dep.containers("web")[0]
        victim.stop(timeout=1)
        wait_for(lambda: "reconcile_drift_pending 1.0" in w.metrics(), timeout=30,
                 what="drift reported")
        assert any(e.get("event") == "drift" for e in w.logs())
        victim.reload()
        assert victim.status == "exited"  # nothing was repaired
        assert serving(dep, "revision=v1")  # the other replica serves
    finally:
        assert w.stop() == 0


def test_unreachable_remote_is_reported_and_retried(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "watch.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", "--repo",
             f"file://{tmp_path}/missing.git", "--branch", "main", "--env", "x",
             "--state-dir", str(tmp_path / "state"), "--poll", "0.2",
             "--metrics-addr", f"127.0.0.1:{port}", "--ui-addr", "off",
             "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
        try:
            def metrics() -> str:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                timeout=5) as resp:
                        return resp.read().decode()
                except OSError:
                    return ""

            wait_for(lambda: "reconcile_failures_total{kind=\"source\"} 2.0" in metrics(),
                     timeout=30, what="two attempts, backing off")
            assert "reconcile_source_up 0.0" in metrics()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    errors = [e for e in events if e.get("event") == "transient-error"]
    assert errors and errors[0]["stale"] == "never read" and errors[0]["level"] == "warning"
