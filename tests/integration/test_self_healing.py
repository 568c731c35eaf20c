"""Self-healing that heals: containers lost by hand are replaced AND served.

Against the real Docker engine and a real HAProxy. Each fault hits every replica of web
where it can (one replica of two would let the other one mask a server left on a dead
port), then one `reconcile apply` must leave HAProxy pointing at the new containers'
ports, runtime and config file alike, in any server state; the service answers again
from the new containers (never from whatever else listens on an old port); and the next
plan is empty. The same repairs happen under `reconcile watch`, within one drift
interval plus the health gate, and show in its metrics.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
from deploy_support import Deployment, wait_for
from fault_support import (
    Traffic,
    assert_config_matches_runtime,
    assert_only_desired_containers,
    assert_servers_point_at_containers,
)
from watch_support import Watch

FAULTS = ["stop-all", "rm-all", "kill-one", "port-taken"]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("heal"), docker_client)
    d.edit("environments/staging.yaml", "replicas: 1", "replicas: 2", "2 replicas")
    try:
        code, out = d.apply()
        assert code == 0, out
        yield d
    finally:
        d.cleanup()


class Imposter:
    """Something else answering HTTP 200 on a port: on the old port of a replaced
    container it would pass HAProxy's health check and hide a stale server."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server API names it so
                body = b"imposter\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, *args: Any) -> None:  # checks that hang up early
                pass

        self.server = Server(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def published_port(container: Any) -> int:
    binds = [b for bs in container.ports.values() for b in bs or ()]
    return int(binds[0]["HostPort"])


def inflict(fault: str, dep: Deployment) -> list[Imposter]:
    """Do ``fault`` to web's containers by hand; the imposters to close afterwards."""
    web = dep.containers("web")
    assert len(web) == 2 and all(c.status == "running" for c in web), web
    if fault == "stop-all":
        for c in web:
            c.stop(timeout=1)
    elif fault == "rm-all":
        for c in web:
            c.remove(force=True)
    elif fault == "kill-one":
        web[0].kill()
    elif fault == "port-taken":
        ports = [published_port(c) for c in web]
        for c in web:
            c.stop(timeout=1)
        return [Imposter(p) for p in ports]
    return []


def serving_new(dep: Deployment) -> bool:
    try:
        code, body = dep.get("/")
    except OSError:
        return False
    return code == 200 and body.startswith("revision=v1")


@pytest.mark.parametrize("fault", FAULTS)
def test_one_apply_serves_again(dep: Deployment, docker_client: docker.DockerClient,
                                fault: str) -> None:
    before = {c.id for c in dep.containers("web")}
    imposters = inflict(fault, dep)
    try:
        with Traffic(dep.url()) as traffic:
            code, out = dep.apply()
        assert code == 0, out
        # the world the plan promised: every server (any state, runtime and file) on the
        # port of its running container; then the service answers from those containers
        assert_servers_point_at_containers(dep, docker_client)
        assert_config_matches_runtime(dep)
        assert_only_desired_containers(dep, docker_client)
        wait_for(lambda: serving_new(dep), timeout=10, what="web to answer again")
        with Traffic(dep.url(), minimum=40) as after:
            wait_for(lambda: len(after.results) >= 40, timeout=30, what="40 answers")
        after.assert_served()
        assert set(after.revisions) == {"revision=v1"}, after.revisions
        if fault == "kill-one":
            traffic.assert_served()  # the other replica served throughout
        code, plan = dep.plan()
        assert code == 0 and plan["actions"] == [], plan
        if fault != "kill-one":  # a killed replica may be restarted by its restart policy
            assert not before & {c.id for c in dep.containers("web")}
    finally:
        for imp in imposters:
            imp.close()


def test_watch_repairs_within_a_drift_interval(dep: Deployment,
                                               docker_client: docker.DockerClient) -> None:
    drift = 2.0
    w = Watch(dep, drift=drift)
    try:
        # The gauge reads 0.0 from the start: the pass counter says the first pass ended
        # (else a fault inflicted meanwhile races with that pass).
        wait_for(lambda: 'reconcile_passes_total{outcome="ok"} 1.0' in w.metrics()
                 and "reconcile_outcome_mismatches 0.0" in w.metrics(), timeout=60,
                 what="the watcher's first pass")
        for n, fault in enumerate(["stop-all", "rm-all", "port-taken"], 1):
            imposters = inflict(fault, dep)
            try:
                t0 = time.monotonic()
                # one drift interval + the health gate (start period 2 s, 1 s checks) +
                # HAProxy's rise 2 at 1 s, with room for a loaded machine
                wait_for(lambda: serving_new(dep), timeout=drift + 20, what=f"{fault}: serving")
                print(f"\n{fault}: serving again after {time.monotonic() - t0:.1f}s")
                counted = f"reconcile_drift_detected_total {float(n)}"  # the pass ended
                wait_for(lambda c=counted: c in w.metrics(), timeout=30,  # type: ignore[misc]
                         what=f"{fault}: drift counted")
                assert_servers_point_at_containers(dep, docker_client)
                metrics = w.metrics()
                assert "reconcile_outcome_mismatches 0.0" in metrics, metrics
                assert "reconcile_drift_pending 0.0" in metrics, metrics
                assert 'reconcile_service_healthy_containers{service="web"} 2.0' in metrics
            finally:
                for imp in imposters:
                    imp.close()
        assert 'reconcile_passes_total{outcome="failed"}' not in w.metrics()
    finally:
        assert w.stop() == 0


def test_status_shows_an_outcome_that_differs(dep: Deployment, tmp_path: Path) -> None:
    """A server left without its container is a mismatch `status` names; apply repairs."""
    victim = dep.containers("web")[0]
    victim.stop(timeout=1)
    code, text = dep.cli("status")
    assert code == 0, text
    assert "OUTCOME DIFFERS" in text and victim.name in text, text
    code, out = dep.apply()
    assert code == 0, out
    code, text = dep.cli("status")
    assert "OUTCOME DIFFERS" not in text and "outcome verified" in text, text
