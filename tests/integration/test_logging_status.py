"""Logs leave the container through the manifest's log driver; status and history show
what runs and what happened."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import docker
import pytest
from deploy_support import Deployment, wait_for


@pytest.fixture
def dep(tmp_path, docker_client: docker.DockerClient) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client)
    yield d
    d.cleanup()


def test_syslog_driver_with_default_tag(dep: Deployment) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.5)
    port = sink.getsockname()[1]
    # ERROR_RATE=bogus makes the app log one line at start-up.
    dep.edit("services/web.yaml", "loadbalancing:",
             "logging:\n  driver: syslog\n  options:\n"
             f"    syslog-address: udp://127.0.0.1:{port}\n"
             "env_placeholder: x\nloadbalancing:", "syslog")
    dep.edit("services/web.yaml", "env_placeholder: x\n", "", "syslog")
    dep.edit("services/web.yaml", "  LOG_LEVEL: info", "  LOG_LEVEL: info\n  ERROR_RATE: bogus",
             "log line")
    code, out = dep.apply()
    assert code == 0, out
    (web,) = dep.containers("web")
    log_config = web.attrs["HostConfig"]["LogConfig"]
    assert log_config["Type"] == "syslog"
    assert log_config["Config"]["tag"] == "web/v1/{{.ID}}"
    expected_tag = f"web/v1/{web.id[:12]}"

    def received() -> str | None:
        try:
            data = sink.recv(65536).decode(errors="replace")
        except TimeoutError:
            return None
        return data if expected_tag in data and "ERROR_RATE" in data else None

    line = wait_for(received, timeout=15, what="a syslog line from the container")
    assert "ignoring invalid ERROR_RATE=bogus" in line
    sink.close()


def test_status_and_history(dep: Deployment) -> None:
    code, out = dep.apply()
    assert code == 0, out
    for _ in range(20):
        assert dep.get("/")[0] == 200
    code, text = dep.cli("status")
    assert code == 0, text
    assert "haproxy on local: running" in text
    assert "service web" in text and "service api" in text
    code, raw = dep.cli("status", "-o", "json")
    doc = json.loads(raw)
    web = next(s for s in doc["services"] if s["service"] == "web")
    (v1,) = web["releases"]
    assert v1["revision"] == "v1" and v1["weight"] == 100
    assert v1["traffic"]["requests"] >= 20 and v1["traffic"]["2xx"] >= 20
    assert v1["traffic"]["5xx"] == 0
    (c,) = web["containers"]
    # "UP", or "UP 1/3" while a check under load is retried
    assert c["status"] == "running" and c["haproxy"].startswith("UP") and c["weight"] == 100
    assert doc["last_run"]["status"] == "ok"
    # history: the run and its steps
    r = dep.cli("history", "-o", "json", repo=False)
    runs = json.loads(r[1][r[1].index("["):])
    assert runs[0]["status"] == "ok" and runs[0]["commit"] == doc["last_run"]["commit"]
    code, steps = dep.cli("history", "--run", str(runs[0]["id"]), repo=False)
    assert "start container" in steps and "because first deploy" in steps


def test_idle_passes_share_one_run_and_the_history_is_bounded(dep: Deployment) -> None:
    code, out = dep.apply()
    assert code == 0, out
    for _ in range(3):  # nothing to do: one run for all three looks
        code, out = dep.apply()
        assert code == 0 and "No changes" in out, out

    def history() -> list[dict[str, object]]:
        raw = dep.cli("history", "-o", "json", repo=False)[1]
        return list(json.loads(raw[raw.index("["):]))

    runs = history()
    assert [(r["status"], r["looks"]) for r in runs] == [("nothing-to-do", 3), ("ok", 1)], runs
    code, text = dep.cli("history", repo=False)
    assert "(3 looks, the last at " in text, text
    # status shows the database's size, and the last run's looks
    code, raw = dep.cli("status", "-o", "json")
    doc = json.loads(raw)
    assert doc["history"]["bytes"] > 0 and doc["history"]["runs"] == 2, doc["history"]
    assert doc["history"]["path"] == str(dep.state / "history.sqlite")
    assert doc["last_run"]["looks"] == 3
    code, text = dep.cli("status")
    assert f"history: {dep.state / 'history.sqlite'}" not in text  # size first, then path
    assert " in " + str(dep.state / "history.sqlite") + " (2 runs)" in text, text
    # retention: a pass prunes the environment's runs beyond --history-runs
    dep.edit("services/web.yaml", "revision: v1", "revision: v2", "web v2")
    code, out = dep.cli("apply", "--health-timeout", "20", "--history-runs", "1")
    assert code == 0, out
    assert [r["status"] for r in history()] == ["ok"]
