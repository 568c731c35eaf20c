"""Rows of docs/operations.md "When something fails", each held against the real Docker
engine and a real HAProxy, on one shared deployment (module scope, tests in file order;
each test ends on a commit that converges, so the next one starts from a clean world):

1. an image cannot be pulled or copied
2. a container cannot be created or started (a secret is unreadable; a name is taken)
3. a new server is not UP in HAProxy within --health-timeout after the reload
4. the embedded HAProxy does not start
5. sessions still open after drain_timeout
6. the stop grace period is honoured when a container is removed (docs/manifests.md)

Each test's docstring quotes its row (row 3 needed a product fix: a server HAProxy had
just loaded counted as UP before its first check). What it asserts is what the row promises: exit
code, message, the run recorded in the history, whether the service is held, what keeps
serving, and HAProxy's servers and config afterwards.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from deploy_support import Deployment, wait_for
from fault_support import (
    ContainerCreates,
    History,
    Traffic,
    answers,
    assert_config_matches_runtime,
    assert_only_desired_containers,
    assert_routes_only_to_healthy,
    config_servers,
)

from reconciler import identity
from reconciler.lb.haproxy.stats import parse_servers_state

pytestmark = pytest.mark.integration

POLICY = Path(__file__).resolve().parent.parent / "fixtures" / "policy.yaml"
SECRET = "rows-db-password-0042"

V1 = "  - revision: v1\n    weight: 100\n"


def web_yaml(releases: str = V1, *, env: str = "", command: str = "", grace: str = "5s",
             drain: str = "10s") -> str:
    """services/web.yaml of the sample repository with the parts these tests vary."""
    return (
        "apiVersion: reconciler/v1\nkind: Service\nname: web\nimage: sample-app\n"
        f"releases:\n{releases}"
        "replicas: 1\nhosts: [local]\nport: 8080\n"
        f"{command}"
        "health:\n  http: /healthz\n  interval: 1s\n  timeout: 1s\n  retries: 3\n"
        "  start_period: 2s\n"
        f"env:\n  GREETING: hello from web\n{env}"
        f"stop_grace_period: {grace}\nrestart: unless-stopped\n"
        "loadbalancing:\n  balance: roundrobin\n  timeouts:\n    connect: 2s\n"
        f"    server: 30s\n  drain_timeout: {drain}\n"
    )


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("rows")
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    policy = root / "policy.yaml"
    # the tests' policy, with a secrets directory of this module's own for file secrets
    policy.write_text(POLICY.read_text().replace(
        "secrets:\n", f"secrets:\n  directory: {secrets}\n", 1))
    mp = pytest.MonkeyPatch()
    mp.setenv("RECONCILE_POLICY", str(policy))
    mp.setenv("STAGING_DB_PASSWORD", SECRET)
    d = Deployment(root, docker_client)
    d.secrets = secrets  # type: ignore[attr-defined]
    try:
        d.write("services/web.yaml", web_yaml(), "web: one release, the tests' settings")
        code, out = d.apply()
        assert code == 0, out
        assert answers(d, 4) == {"revision=v1": 4}
        yield d
    finally:
        d.cleanup()
        mp.undo()


# --------------------------------------------------------------------------- helpers


def last_run(dep: Deployment) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    history = History(dep.state)
    try:
        run_id = history.last_run()
        return history.run(run_id), history.steps(run_id)
    finally:
        history.close()


def servers(dep: Deployment, backend: str) -> dict[str, dict[str, Any]]:
    """Server name -> address, port, weight, admin state (runtime) and status (show stat)
    of one backend, as HAProxy has them now."""
    stats = {s.server: s for s in dep.haproxy.server_stats() if s.backend == backend}
    out: dict[str, dict[str, Any]] = {}
    for s in parse_servers_state(dep.haproxy.stats.command("show servers state")):
        if s.backend == backend:
            st = stats.get(s.server)
            out[s.server] = {"address": s.address, "port": s.port, "weight": s.weight,
                             "admin": s.admin, "status": st.status if st else None,
                             "check": st.check_status if st else None}
    return out


def server_of(dep: Deployment, container: Any) -> str:
    return identity.server_name("local", container.name)


def converges(dep: Deployment, client: docker.DockerClient) -> str:
    """Apply exits 0; then plan is empty, exactly the desired containers run, HAProxy
    routes only to healthy ones and its config file lists what it runs."""
    code, out = dep.apply()
    assert code == 0, out
    code, plan = dep.plan()
    assert code == 0 and plan["actions"] == [], plan
    assert_only_desired_containers(dep, client)
    assert_routes_only_to_healthy(dep, client)
    assert_config_matches_runtime(dep)
    return out


def greet(dep: Deployment, greeting: str) -> str:
    """Commit a new GREETING for web (a new container config); the commit."""
    f = dep.repo / "services/web.yaml"
    text = re.sub(r"GREETING: .*", f"GREETING: {greeting}", f.read_text())
    return dep.write("services/web.yaml", text, f"web: greeting {greeting}")


def body(dep: Deployment, path: str = "/") -> str:
    status, text = dep.get(path)
    assert status == 200, (status, text)
    return text


# --------------------------------------------------------------------------- 1. pull


def test_image_that_cannot_be_pulled_holds_its_service(dep: Deployment,
                                                       docker_client: docker.DockerClient
                                                       ) -> None:
    """Row "an image cannot be pulled or copied": that service is held; the pass goes on
    without it (`note: service web held: host ...: cannot pull ...`); exit 1; run
    `failed`, service held."""
    web_before = {c.id for c in dep.containers("web")}
    api_before = {c.id for c in dep.containers("api")}
    # a registry that refuses connections: the pull fails at once, for real
    image = "127.0.0.1:9/rows/sample-app:v9"
    dep.write("services/web.yaml",
              web_yaml("  - revision: v9\n    weight: 100\n"
                       f"    image: {image}\n"), "web v9 from a registry that is down")
    dep.edit("services/api.yaml", "GREETING: hello from api", "GREETING: api pass 1",
             "api: new greeting")
    code, out = dep.cli("apply", "--health-timeout", "20")
    assert code == 1, out
    assert re.search(rf"note: service web held: host local: cannot pull {re.escape(image)}: ",
                     out), out
    # the pass went on without web: api switched, web kept its container and traffic
    assert {c.id for c in dep.containers("web")} == web_before
    assert not {c.id for c in dep.containers("api")} & api_before
    assert "greeting=api pass 1" in body(dep, "/api")
    assert answers(dep, 6) == {"revision=v1": 6}
    assert {s["status"] for s in servers(dep, "be_web").values()} == {"UP"}
    run, steps = last_run(dep)
    assert run["status"] == "failed" and "web failed" in run["summary"], run
    assert {s["service"] for s in steps} == {"api", None}, steps  # web got no step at all
    assert {s["status"] for s in steps} == {"ok"}, steps
    # held: the same commit leaves web alone and says so; exit 0
    code, out = dep.cli("apply", "--health-timeout", "20")
    assert code == 0, out
    assert f"note: service web held: host local: cannot pull {image}" in out, out
    code, plan = dep.plan()
    assert code == 0 and plan["actions"] == [], plan
    # the fix (web back on an image that is here) converges
    dep.write("services/web.yaml", web_yaml(), "web back to v1")
    converges(dep, docker_client)
    assert {c.id for c in dep.containers("web")} == web_before


# --------------------------------------------------------------------------- 2. secret

def test_unreadable_secret_fails_only_its_service(dep: Deployment,
                                                  docker_client: docker.DockerClient) -> None:
    """Row "a container cannot be created or started (Docker error, image missing, secret
    unreadable)", for all replicas: the service's later steps are skipped; other services
    go on; exit 1; run `failed`, service held; its old release keeps serving.

    api (2 replicas, started side by side) gets a file secret whose file is missing: no
    replica can read it, so no api container is created at all."""
    secrets: Path = dep.secrets  # type: ignore[attr-defined]
    secret = secrets / "db_password"
    secret.unlink(missing_ok=True)
    api_before = {c.name for c in dep.containers("api")}
    api_body = body(dep, "/api")
    web_before = {c.name for c in dep.containers("web")}
    dep.edit("environments/staging.yaml", "    env: STAGING_DB_PASSWORD\n",
             f"    file: {secret}\n", "DB_PASSWORD from a file")
    dep.edit("environments/staging.yaml", "  web:\n    replicas: 1\n",
             "  web:\n    replicas: 1\n  api:\n    replicas: 2\n", "api x2")
    greet(dep, "web pass 2")
    with (Traffic(dep.url("/api")) as traffic,
          ContainerCreates(docker_client, dep.env) as creates):
        code, out = dep.cli("apply", "--health-timeout", "20")
    assert code == 1, out
    why = f"secret DB_PASSWORD: cannot read {secret} on host local: no such file"
    assert f"error: api: {why}" in out, out
    assert SECRET not in out
    assert not [n for n in creates.names if "-api-" in n], creates.names
    assert {c.name for c in dep.containers("api")} == api_before
    # api's old release kept serving, through the whole pass
    traffic.assert_served()
    assert body(dep, "/api") == api_body
    # its later steps were skipped (a replica whose start had not begun when its sibling
    # failed is skipped too); web went on and switched
    run, steps = last_run(dep)
    assert run["status"] == "failed" and "api failed" in run["summary"], run
    api_steps = [(s["kind"], s["status"]) for s in steps if s["service"] == "api"]
    assert [k for k, _ in api_steps] == ["start-container", "start-container", "add-server",
                                         "add-server", "drain-server", "remove-server",
                                         "remove-container"], api_steps
    start_status = {st for _, st in api_steps[:2]}
    assert "failed" in start_status and start_status <= {"failed", "skipped"}, api_steps
    assert {st for _, st in api_steps[2:]} == {"skipped"}, api_steps
    assert not {c.name for c in dep.containers("web")} & web_before
    assert "greeting=web pass 2" in body(dep, "/")
    # api is held at this commit
    code, plan = dep.plan()
    assert code == 0 and plan["actions"] == [], plan
    assert plan["notes"] == [f"service api held: {why}"], plan
    # the fix: the file is there; a new commit rolls api
    secret.write_text(SECRET + "\n")
    dep.edit("environments/staging.yaml", f"    file: {secret}\n",
             f"    file: {secret}\n    version: 2\n", "DB_PASSWORD restored")
    converges(dep, docker_client)
    assert len(dep.containers("api")) == 2
    assert all(f"DB_PASSWORD={SECRET}" in c.attrs["Config"]["Env"] for c in dep.containers("api"))


def test_one_replica_that_cannot_start_undoes_its_siblings(
        dep: Deployment, docker_client: docker.DockerClient) -> None:
    """The same row for one replica of two: replica 1's name is taken by a container
    this reconciler does not own (a Docker error on create); replica 0, started beside
    it, is removed again (if its start had not begun, it is skipped); exit 1; api held;
    its old release serves on; the squatter is left alone."""
    secret = dep.secrets / "db_password"  # type: ignore[attr-defined]
    api_before = {c.name for c in dep.containers("api")}
    assert len(api_before) == 2
    # two replicas answer in turn: what both say is their release (host= differs)
    api_release = body(dep, "/api").split(" host=")[0]
    dep.edit("environments/staging.yaml", "    version: 2\n", "    version: 3\n",
             "DB_PASSWORD version 3")
    code, plan = dep.plan()
    assert code == 2, plan  # changes pending
    starts = [x["name"] for x in plan["actions"]
              if x["kind"] == "start-container" and x["service"] == "api"]
    assert len(starts) == 2 and starts[1].endswith("-1"), starts
    squatter = docker_client.containers.create("sample-app:v1", name=starts[1],
                                               labels={"io.reconciler-tests.squatter": "1"})
    try:
        with (Traffic(dep.url("/api")) as traffic,
              ContainerCreates(docker_client, dep.env) as creates):
            code, out = dep.cli("apply", "--health-timeout", "20")
        assert code == 1, out
        assert (f"error: api: container name {starts[1]} is taken on host local by a "
                "container this reconciler instance does not own") in out, out
        traffic.assert_served()
        assert {body(dep, "/api").split(" host=")[0] for _ in range(4)} == {api_release}
        # whatever this pass created for api is gone again; the old replicas run
        assert set(creates.names) <= {starts[0]}, creates.names
        assert not docker_client.containers.list(all=True, filters={"name": starts[0]})
        assert {c.name for c in dep.containers("api")} == api_before
        squatter.reload()
        _, steps = last_run(dep)
        status = {name: s["status"] for s in steps for name in starts
                  if s["kind"] == "start-container" and name in s["description"]}
        assert status[starts[1]] == "failed" and status[starts[0]] in {"ok", "skipped"}, steps
        code, plan = dep.plan()
        assert code == 0 and plan["actions"] == [], plan
        assert len(plan["notes"]) == 1 and plan["notes"][0].startswith("service api held:"), plan
    finally:
        squatter.remove(force=True)
    dep.edit("environments/staging.yaml", "    version: 3\n", "    version: 4\n",
             "DB_PASSWORD version 4")
    converges(dep, docker_client)
    assert len(dep.containers("api")) == 2
    assert secret.exists()


# --------------------------------------------------------------------------- 3. not UP

# The reconciler's health gate wants one good answer to GET /healthz; HAProxy checks the
# same path on its own, again and again. This container answers the gate's probe once,
# with a 200 from busybox's nc, then runs the app with FAIL_HEALTH=1: /healthz is 503 for
# every check HAProxy makes, while the gate has passed for real.
ONE_GOOD_ANSWER = (
    'command: ["/bin/sh", "-c", "printf \'HTTP/1.0 200 OK\\\\r\\\\nContent-Length: 0\\\\r\\\\n'
    '\\\\r\\\\n\' | nc -l -p 8080; exec /app"]\n'
)


def test_server_not_up_in_haproxy_is_deleted_and_its_service_fails(
        dep: Deployment, docker_client: docker.DockerClient) -> None:
    """Row "a new server added at runtime is not UP in HAProxy within --health-timeout":
    it was added at weight 0, so it never got a request; it is deleted again, the service
    fails and its new container is removed; exit 1; run `failed`, service held; the old
    release keeps serving, and no request reached the new one (HAProxy's own first check
    decides, not the reconciler's gate)."""
    old = dep.containers("web")
    assert len(old) == 1
    old_server = server_of(dep, old[0])
    old_body = body(dep, "/")
    before = (dep.repo / "services/web.yaml").read_text()
    reloads = dep.reloads()
    dep.write("services/web.yaml", web_yaml(
        "  - revision: v2\n    weight: 100\n", env='  FAIL_HEALTH: "1"\n',
        command=ONE_GOOD_ANSWER), "web v2: passes the gate once, then fails /healthz")
    with Traffic(dep.url()) as traffic:
        t0 = time.monotonic()
        code, out = dep.cli("apply", "--health-timeout", "3")
        took = time.monotonic() - t0
    assert code == 1, out
    run, steps = last_run(dep)
    (add,) = [a for a in json.loads(run["plan_json"])["actions"]
              if a["kind"] == "add-server" and a["service"] == "web"]
    new_server = add["server"]
    assert add["runtime"] and not any(a["reloads"] for a in json.loads(run["plan_json"])["actions"])
    assert f"error: web: server be_web/{new_server} did not come UP in HAProxy" in out, out
    assert "deleted again (it got no request)" in out, out
    # the gate passed (the start step is ok); HAProxy's own check did not
    web_steps = [(s["kind"], s["status"]) for s in steps if s["service"] == "web"]
    assert web_steps == [("start-container", "ok"), ("add-server", "failed"),
                         ("drain-server", "skipped"), ("remove-server", "skipped"),
                         ("remove-container", "skipped")], web_steps
    assert run["status"] == "failed" and "web failed" in run["summary"], run
    # HAProxy and its file: only the old server, UP at 100; no reload
    now = servers(dep, "be_web")
    assert set(now) == {old_server}, now
    assert now[old_server]["weight"] == 100 and now[old_server]["admin"] == (), now
    assert now[old_server]["status"] == "UP", now
    assert {s[1] for s in config_servers(dep) if s[0] == "be_web"} == {old_server}
    assert dep.reloads() == reloads
    # its container is removed; every request went to the old release
    assert [c.name for c in dep.containers("web")] == [old[0].name]
    traffic.assert_served()
    assert set(traffic.revisions) == {"revision=v1"}, traffic.revisions
    assert answers(dep, 10) == {"revision=v1": 10}
    assert body(dep, "/") == old_body
    assert took < 20, took  # the wait was --health-timeout, not the default 30 s
    # held at this commit: nothing is done to web
    code, plan = dep.plan()
    assert code == 0 and plan["actions"] == [], plan
    assert len(plan["notes"]) == 1 and plan["notes"][0].startswith(
        f"service web held: server be_web/{new_server} did not come UP in HAProxy"), plan
    # the fix: back to what ran before
    dep.write("services/web.yaml", before, "web back to v1")
    converges(dep, docker_client)
    assert [c.name for c in dep.containers("web")] == [old[0].name]


# --------------------------------------------------------------------------- 4. start


def test_haproxy_that_does_not_start_stops_the_pass(dep: Deployment,
                                                    docker_client: docker.DockerClient
                                                    ) -> None:
    """Row "the embedded HAProxy does not start (`haproxy did not start: ...`)": the pass
    stops; exit 1; run `failed`.

    HAProxy is down and another process listens on its frontend's port (the installed
    config binds it already, so no bind check runs: the start itself fails)."""
    old = {c.name for c in dep.containers("web")}
    dep.haproxy.stop()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAITs
    holder.bind(("127.0.0.1", dep.port))
    holder.listen()
    try:
        commit = greet(dep, "web pass 4")
        code, out = dep.cli("apply", "--health-timeout", "20")
        assert code == 1, out
        assert re.search(r"error: haproxy: haproxy did not start: .*cannot bind socket", out), out
        assert f"127.0.0.1:{dep.port}" in out, out
        assert not dep.haproxy.running()
        run, steps = last_run(dep)
        assert run["status"] == "failed" and "haproxy failed" in run["summary"], run
        # the pass stopped at the failed start: no step of the plan after it ran
        planned = [a["kind"] for a in json.loads(run["plan_json"])["actions"]]
        done = [(s["kind"], s["status"]) for s in steps]
        assert done[-1] == ("configure-haproxy", "failed"), done
        assert {st for _, st in done[:-1]} == {"ok"}, done
        assert [k for k, _ in done] == planned[:len(done)], (planned, done)
        assert "remove-container" in planned[len(done):], planned
        assert old <= {c.name for c in dep.containers("web")}  # so the old one was not removed
        started = [c for c in dep.containers("web") if c.labels[identity.COMMIT] == commit]
        assert len(started) == 1 and started[0].status == "running"  # kept for the next pass
    finally:
        holder.close()
    # not held: the next pass starts HAProxy and goes on
    out = converges(dep, docker_client)
    assert "started HAProxy" in out, out
    assert "greeting=web pass 4" in body(dep, "/")


# --------------------------------------------------------------------------- 5. drain


def test_sessions_still_open_after_drain_timeout(dep: Deployment,
                                                 docker_client: docker.DockerClient) -> None:
    """Row "sessions still open after `drain_timeout`": the server is removed anyway
    (`sessions still open after Ns; removed anyway`); not a failure.

    v1 answers after 8 s (DELAY_MS); a request to it is open when v1 is retired with a
    drain_timeout of 1 s."""
    dep.write("services/web.yaml", web_yaml(
        '  - revision: v1\n    weight: 100\n    env:\n      DELAY_MS: "8000"\n'
        "  - revision: v2\n    weight: 0\n", drain="1s"), "web: slow v1 at 100, v2 at 0")
    code, out = dep.apply()
    assert code == 0, out
    (slow,) = [c for c in dep.containers("web") if c.labels[identity.REVISION] == "v1"]
    server = server_of(dep, slow)

    def sessions() -> int:
        return sum(s.current_sessions for s in dep.haproxy.server_stats()
                   if (s.backend, s.server) == ("be_web", server))

    outcome: list[str] = []

    def request() -> None:
        try:
            with urllib.request.urlopen(dep.url("/slow"), timeout=30) as resp:
                outcome.append(f"HTTP {resp.status}")
        except urllib.error.HTTPError as exc:
            outcome.append(f"HTTP {exc.code}")
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    try:
        wait_for(lambda: sessions() > 0, timeout=10, what=f"a session on {server}")
        dep.write("services/web.yaml", web_yaml("  - revision: v2\n    weight: 100\n",
                                                drain="1s"), "web: v2 only")
        code, out = dep.apply()
        assert code == 0, out
        assert re.search(rf"ok +local: drain be_web/{re.escape(server)} \(up to 1s\) "
                         r"\([\d.]+s\) - sessions still open after 1s; removed anyway", out), out
    finally:
        thread.join(30)
    assert len(outcome) == 1, outcome  # the slow request ended (how is not promised)
    # removed anyway: from HAProxy, its config and Docker; the run is ok
    assert server not in servers(dep, "be_web")
    assert server not in {s[1] for s in config_servers(dep)}
    assert slow.name not in {c.name for c in dep.containers("web")}
    run, steps = last_run(dep)
    assert run["status"] == "ok", run
    assert {s["status"] for s in steps} == {"ok"}, steps
    assert answers(dep, 6) == {"revision=v2": 6}


# --------------------------------------------------------------------------- 6. grace

# PID 1 of the container ignores SIGTERM (the app runs as its child): only the SIGKILL
# after the grace period stops it.
IGNORES_TERM = 'command: ["/bin/sh", "-c", "trap \'\' TERM; /app & wait"]\n'


def test_removed_container_gets_its_stop_grace_period(dep: Deployment,
                                                      docker_client: docker.DockerClient
                                                      ) -> None:
    """Promise "stop grace period honoured": a removed container gets the
    `stop_grace_period` it was created with between the stop signal and the kill
    (docs/manifests.md: `stop_grace_period` "Time between stop signal and kill when a
    container is removed"; removing a release stops its containers "each with the
    `stop_grace_period` it was created with"; operations.md, a pass, step 6)."""
    dep.write("services/web.yaml", web_yaml(command=IGNORES_TERM, grace="3s", drain="2s"),
              "web ignores SIGTERM; grace 3s")
    code, out = dep.apply()
    assert code == 0, out
    (old,) = dep.containers("web")
    assert old.attrs["Config"]["StopTimeout"] == 3, old.attrs["Config"]
    # the next release has a grace period of its own, 1 s: the old container keeps its 3 s
    dep.write("services/web.yaml", web_yaml(grace="1s", drain="2s"), "web: grace 1s")
    t0 = time.time()
    code, out = dep.apply()
    t1 = time.time()
    assert code == 0, out
    (new,) = dep.containers("web")
    assert new.attrs["Config"]["StopTimeout"] == 1, new.attrs["Config"]
    events = list(docker_client.events(since=int(t0), until=int(t1) + 1, decode=True,
                                       filters={"type": "container", "container": old.id}))
    kills = [(e["timeNano"] / 1e9, e["Actor"]["Attributes"].get("signal")) for e in events
             if e["Action"] == "kill"]
    assert [signal for _, signal in kills] == ["15", "9"], events
    grace = kills[1][0] - kills[0][0]
    assert 2.8 <= grace <= 10, f"SIGKILL came {grace:.2f}s after SIGTERM; want 3s"
    (die,) = [e for e in events if e["Action"] == "die"]
    assert die["Actor"]["Attributes"]["exitCode"] == "137", die
    assert old.name not in {c.name for c in dep.containers()}
    _, steps = last_run(dep)
    (removal,) = [s for s in steps if s["kind"] == "remove-container"]
    assert removal["status"] == "ok" and removal["duration_s"] >= 2.8, removal
