"""The four-run pattern for each kind of change, against the real engine and HAProxy.

The scenarios share one deployment and run in order (each starts from the world the
previous one left), which keeps the suite fast: one HAProxy, a handful of containers.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment, free_port
from repo_support import git

from reconciler import identity


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("scenarios"), docker_client)
    yield d
    d.cleanup()


def test_first_deploy(dep: Deployment) -> None:
    first = dep.four_runs()
    kinds = {a["kind"] for a in first["actions"]}
    assert kinds == {"start-container", "add-server", "configure-haproxy"}
    assert dep.revisions("web") == ["v1"] and dep.revisions("api") == ["v1"]
    status, body = dep.get("/")
    assert status == 200, (status, body)
    assert "revision=v1 greeting=hello from web" in body
    assert "greeting=hello from api" in dep.get("/api/users")[1]
    # the secret reached the container, and no output shows it
    api = dep.containers("api")[0]
    assert "DB_PASSWORD=not-a-real-password" in api.attrs["Config"]["Env"]
    code, history = dep.cli("history", "-n", "5", repo=False)
    assert code == 0 and " ok " in history, history
    code, runs = dep.cli("history", "-n", "5", "-o", "json", repo=False)
    assert code == 0, runs
    applied = [r["id"] for r in json.loads(runs) if r["status"] == "ok"]
    assert applied, runs
    outputs = [history, runs]
    for fmt in ("text", "json"):
        code, steps = dep.cli("history", "--run", str(applied[-1]), "-o", fmt, repo=False)
        assert code == 0 and "api-v1" in steps, steps
        outputs.append(steps)
    for out in outputs:
        assert "not-a-real-password" not in out



def test_secret_a_failed_start_prints_is_blanked_in_history(dep: Deployment) -> None:
    """A release of api that prints its secret and dies: its log tail reaches the history
    (text, json, --run text and json), with the value blanked. The blanked line must be
    there: without it the check above (a successful deploy, whose records hold no
    container output at all) would pass with no redaction whatsoever."""
    before = sorted(c.id for c in dep.containers())
    dep.edit("services/api.yaml", "secrets: [DB_PASSWORD]",
             'secrets: [DB_PASSWORD]\ncommand: ["/bin/sh", "-c", '
             '"echo DB_PASSWORD=$DB_PASSWORD; echo $DB_PASSWORD >&2; exit 3"]',
             "api prints its secret")
    try:
        code, out = dep.apply()
        assert code == 1 and "DB_PASSWORD=******" in out, out
        outputs = {"apply": out}
        for what, args in {"history": (), "history json": ("-o", "json")}.items():
            code, outputs[what] = dep.cli("history", "-n", "5", *args, repo=False)
            assert code == 0, outputs[what]
        failed = [r["id"] for r in json.loads(outputs["history json"]) if r["status"] == "failed"]
        assert failed, outputs["history json"]
        for fmt in ("text", "json"):
            code, steps = dep.cli("history", "--run", str(failed[0]), "-o", fmt, repo=False)
            assert code == 0 and "DB_PASSWORD=******" in steps, steps  # the tail is there
            outputs[f"history --run {fmt}"] = steps
        for what, text in outputs.items():
            assert "not-a-real-password" not in text, f"the secret appears in {what}:\n{text}"
    finally:
        git(dep.repo, "revert", "--no-edit", "HEAD")
    code, out = dep.apply()
    assert code == 0, out
    assert sorted(c.id for c in dep.containers()) == before  # the failed start left nothing

def test_new_release(dep: Deployment) -> None:
    old = {c.id for c in dep.containers("web")}
    dep.edit("services/web.yaml", "revision: v1", "revision: v2", "web v2")
    first = dep.four_runs()
    reasons = {a["reason"] for a in first["actions"] if a["kind"] == "remove-container"}
    assert reasons == {"release v1 removed"}
    assert dep.revisions("web") == ["v2"]
    assert not old & {c.id for c in dep.containers("web")}  # new containers, none mutated
    assert "revision=v2" in dep.get("/")[1]


def test_env_change(dep: Deployment) -> None:
    old = {c.id for c in dep.containers("web")}
    dep.edit("services/web.yaml", "GREETING: hello from web", "GREETING: bonjour", "greeting")
    first = dep.four_runs()
    starts = [a for a in first["actions"] if a["kind"] == "start-container"]
    assert starts and all(
        a["reason"] == "env GREETING changed (hello from web -> bonjour)" for a in starts)
    assert not old & {c.id for c in dep.containers("web")}
    assert "greeting=bonjour" in dep.get("/")[1]


def test_replica_change(dep: Deployment) -> None:
    dep.edit("environments/staging.yaml", "replicas: 1", "replicas: 3", "3 replicas")
    dep.four_runs()
    assert len(dep.containers("web")) == 3
    dep.edit("environments/staging.yaml", "replicas: 3", "replicas: 2", "2 replicas")
    first = dep.four_runs()
    assert [a["kind"] for a in first["actions"]].count("remove-container") == 1
    assert len(dep.containers("web")) == 2


def test_weight_change_needs_no_reload(dep: Deployment) -> None:
    dep.edit("services/web.yaml", "  - revision: v2\n    weight: 100",
             "  - revision: v2\n    weight: 90\n  - revision: v3\n    weight: 10", "canary v3")
    dep.four_runs()
    assert dep.revisions("web") == ["v2", "v2", "v3", "v3"]
    reloads = dep.reloads()
    dep.edit("services/web.yaml", "weight: 90", "weight: 50", "50/50")
    dep.edit("services/web.yaml", "weight: 10", "weight: 50", "50/50")
    first = dep.four_runs()
    assert {a["kind"] for a in first["actions"]} == {"set-weight", "configure-haproxy"}
    assert dep.reloads() == reloads  # runtime API only, checked through the master CLI
    weights = {s.server: s.weight for s in dep.haproxy.server_stats() if s.backend == "be_web"}
    assert sorted(weights.values()) == [50, 50, 50, 50]
    assert "weight 50" in dep.haproxy.paths.config.read_text()  # kept across reloads
    seen = {dep.get("/")[1].split()[0] for _ in range(40)}
    assert seen == {"revision=v2", "revision=v3"}


def test_release_removal(dep: Deployment) -> None:
    dep.edit("services/web.yaml", "  - revision: v2\n    weight: 50\n", "", "drop v2")
    dep.edit("services/web.yaml", "weight: 50", "weight: 100", "v3 100")
    first = dep.four_runs()
    assert {a["reason"] for a in first["actions"] if a["kind"] == "remove-container"} == {
        "release v2 removed"}
    assert dep.revisions("web") == ["v3", "v3"]
    assert {dep.get("/")[1].split()[0] for _ in range(10)} == {"revision=v3"}


def test_service_removal(dep: Deployment) -> None:
    (dep.repo / "services" / "api.yaml").unlink()
    dep.edit("environments/production.yaml", "  api:\n    replicas: 2\n", "", "no api in prod")
    dep.edit("loadbalancer.yaml", "    routes:\n      - path_prefix: /api\n        service: api\n",
             "", "remove api")
    first = dep.four_runs()
    assert {a["reason"] for a in first["actions"] if a["kind"] == "remove-container"} == {
        "service api removed"}
    assert dep.containers("api") == []
    assert "be_api" not in dep.haproxy.paths.config.read_text()
    assert "revision=v3" in dep.get("/api/users")[1]  # now served by web's default route


def test_tls_frontend_added(dep: Deployment, tmp_path: Path) -> None:
    cert = tmp_path / "site.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(cert), "-out", str(cert)],
                   check=True, capture_output=True)
    https_port = free_port()
    dep.edit("loadbalancer.yaml", "frontends:\n",
             f"frontends:\n  - name: https\n    bind: \"127.0.0.1:{https_port}\"\n"
             f"    tls:\n      certificate: {cert}\n    default_service: web\n", "https")
    first = dep.four_runs()
    assert [a["kind"] for a in first["actions"]] == ["configure-haproxy"]
    assert "frontend fe_https added" in first["actions"][0]["description"]
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    with urllib.request.urlopen(f"https://127.0.0.1:{https_port}/", context=ctx,
                                timeout=5) as resp:
        assert "revision=v3" in resp.read().decode()
    # HTTP to HTTPS redirect on the plain frontend
    dep.edit("loadbalancer.yaml", "  - name: http\n", "  - name: http\n    redirect_https: true\n",
             "redirect")
    first = dep.four_runs()
    assert [a["kind"] for a in first["actions"]] == ["configure-haproxy"]
    conn = http.client.HTTPConnection("127.0.0.1", dep.port, timeout=5)
    conn.request("GET", "/some/page", headers={"Host": "shop.example"})
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == "https://shop.example/some/page"


def test_unmanaged_containers_are_never_touched(dep: Deployment,
                                                docker_client: docker.DockerClient) -> None:
    stranger = docker_client.containers.run(
        "sample-app:v1", detach=True, name=f"{dep.env}-web-v3-handmade",
        labels={identity.ENVIRONMENT: dep.env, identity.SERVICE: "web"})  # not "managed"
    try:
        code, out = dep.apply()
        assert code == 0 and "No changes" in out
        stranger.reload()
        assert stranger.status == "running"
    finally:
        stranger.remove(force=True)
