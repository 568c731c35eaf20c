"""HAProxy's request log, for real: every request in the ring (request records) and, when
the LoadBalancer names a syslog server, also at a real rsyslogd (the talk's rsyslog
path), one line per request with revision-telling server, status, times and path."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest
from deploy_support import Deployment, wait_for
from syslog_support import Rsyslog

from reconciler.lb.haproxy.requestlog import RING, parse_events

pytestmark = pytest.mark.integration

LB = "loadbalancer.yaml"
FRONTENDS = "frontends:\n"


@pytest.fixture(scope="module")
def syslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    r = Rsyslog(tmp_path_factory.mktemp("rsyslog"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory, syslog: Rsyslog) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("reqlog"), docker.from_env())
    d.edit(LB, FRONTENDS, f'syslog: {{address: "{syslog.address}"}}\n{FRONTENDS}')
    code, out = d.apply()
    assert code == 0, out
    yield d
    d.cleanup()


def probe(dep: Deployment, tag: str, n: int) -> None:
    for i in range(n):
        code, _ = dep.get(f"/{tag}/{i}")
        assert code == 200


def test_every_request_reaches_the_ring_and_rsyslog(dep: Deployment, syslog: Rsyslog) -> None:
    probe(dep, "both", 20)
    ring = [r for r in parse_events(dep.haproxy.stats.command(f"show events {RING}"))
            if r.path.startswith("/both/")]
    assert sorted(r.path for r in ring) == sorted(f"/both/{i}" for i in range(20))
    assert {r.backend for r in ring} == {"be_web"} and {r.status for r in ring} == {200}
    assert all(r.method == "GET" and r.total_ms >= 0 and r.bytes > 0 for r in ring)

    def at_rsyslog() -> list[str]:
        got = [line for line in syslog.lines() if " p=/both/" in line]
        return got if len(got) >= 20 else []

    lines = wait_for(at_rsyslog, 10, "20 request lines at rsyslogd")
    assert len(lines) == 20, lines
    parsed = parse_events("\n".join(lines))
    assert sorted(r.path for r in parsed) == sorted(r.path for r in ring)
    assert {(r.server, r.status) for r in parsed} == {(r.server, r.status) for r in ring}


def test_records_off_keeps_syslog_only(dep: Deployment, syslog: Rsyslog) -> None:
    dep.edit(LB, FRONTENDS, f"request_records: false\n{FRONTENDS}")
    code, out = dep.apply()
    assert code == 0, out
    config = dep.haproxy.paths.config.read_text()
    assert f"ring {RING}" not in config and f"log {syslog.address}" in config
    assert RING not in dep.haproxy.stats.command("show events")  # the running one too
    probe(dep, "sysonly", 5)
    wait_for(lambda: sum(" p=/sysonly/" in line for line in syslog.lines()) == 5, 10,
             "5 request lines at rsyslogd with the ring off")
