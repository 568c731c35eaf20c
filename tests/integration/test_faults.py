"""Faults during and between passes, against the real Docker engine and a real HAProxy.

Each fault ends the same way: the service answers through HAProxy during the fault (but
while the engine itself is down) and after it (requests are counted, not assumed),
HAProxy only points at running, healthy containers, and the next pass converges (apply
exits 0, then plan shows no changes, and exactly the desired containers exist).

The Docker daemon restart comes last: it stops every container of the engine for a
moment, so nothing may run after it in this file.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner
from deploy_support import Deployment, free_port, wait_for
from fault_support import (
    ApplyProcess,
    ContainerCreates,
    DockerDaemon,
    History,
    Traffic,
    answers,
    assert_config_matches_runtime,
    assert_only_desired_containers,
    assert_routes_only_to_healthy,
    assert_servers_point_at_containers,
    restarted_dockerd,
)

from reconciler import identity
from reconciler.cli import main

UNHEALTHY_V2 = '  - revision: v2\n    weight: 100\n    env:\n      FAIL_HEALTH: "1"\n'


def _deploy(root: Path, client: docker.DockerClient, web_replicas: int = 1) -> Deployment:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    dep = Deployment(root, client)
    try:
        if web_replicas != 1:
            dep.edit("environments/staging.yaml", "replicas: 1", f"replicas: {web_replicas}")
        code, out = dep.apply()
        assert code == 0, out
        assert dep.get("/")[0] == 200
    except BaseException:
        dep.cleanup()
        raise
    return dep


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    d = _deploy(tmp_path, docker_client)
    try:
        yield d
    finally:
        d.cleanup()


def converge(dep: Deployment, client: docker.DockerClient) -> str:
    """The next pass converges: apply exits 0 while traffic flows, then plan is empty and
    exactly the desired containers exist."""
    with Traffic(dep.url()) as traffic:
        code, out = dep.apply()
    assert code == 0, out
    traffic.assert_served()
    code, plan = dep.plan()
    assert code == 0 and plan["actions"] == [], plan
    assert_only_desired_containers(dep, client)
    assert_routes_only_to_healthy(dep, client)
    assert_servers_point_at_containers(dep, client)
    assert_config_matches_runtime(dep)
    return out


def web_servers_in_config(dep: Deployment) -> set[str]:
    text = dep.haproxy.paths.config.read_text()
    backend = text.split("\nbackend be_web\n", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\s+server (\S+) ", backend, re.M))


def retry(dep: Deployment, service: str) -> str:
    r = CliRunner().invoke(main, ["retry", service, "--env", dep.env,
                                  "--state-dir", str(dep.state)])
    assert r.exit_code == 0, r.output
    return r.output


# --------------------------------------------------------------------------- 1. unhealthy


def test_unhealthy_release_is_removed_held_and_retried(dep: Deployment,
                                                        docker_client: docker.DockerClient
                                                        ) -> None:
    history = History(dep.state)
    old = {c.name for c in dep.containers("web")}
    old_servers = web_servers_in_config(dep)
    assert old_servers == {identity.server_name("local", n) for n in old}
    dep.edit("services/web.yaml", "  - revision: v1\n    weight: 100\n", UNHEALTHY_V2,
             "web v2 (fails its health check)")

    with ContainerCreates(docker_client, dep.env) as creates, Traffic(dep.url()) as traffic:
        code, out = dep.cli("apply", "--health-timeout", "1")
    assert code == 1, out
    # the failure names the container, its last health output and its log tail
    assert re.search(r"error: web: host local: container \S+-web-v2-\S+ is not healthy: "
                     r"GET /healthz: HTTP 503", out), out
    assert "last log lines:" in out and "fail_health=1" in out, out
    # the new containers are gone; the old release kept all the traffic
    traffic.assert_served()
    assert set(traffic.revisions) == {"revision=v1"}, traffic.revisions
    assert creates.names and all("-web-v2-" in n for n in creates.names), creates.names
    assert {c.name for c in dep.containers("web")} == old
    assert web_servers_in_config(dep) == old_servers
    assert {s.server for s in dep.haproxy.server_stats() if s.backend == "be_web"} == old_servers
    assert answers(dep, 20) == {"revision=v1": 20}
    # history shows the failed run
    run = history.run(history.last_run())
    assert run["status"] == "failed" and "web failed" in run["summary"], run
    r = CliRunner().invoke(main, ["history", "--run", str(run["id"]),
                                  "--state-dir", str(dep.state)])
    assert r.exit_code == 0, r.output
    recorded = r.output  # the steps of the failed run, and why it failed
    # (the start step itself reads "ok": its health gate runs after the step was
    # recorded; the failure is the service's, below, and every later step is skipped)
    assert re.search(r"skipped\s+local\s+add server \S+-web-v2-", recorded), recorded
    assert re.search(r"skipped\s+local\s+remove server \S+-web-v1-", recorded), recorded
    assert "failed: web: host local: container" in recorded, recorded
    assert "is not healthy" in recorded and "fail_health=1" in recorded, recorded
    _, text = dep.cli("status")
    assert "held: host local: container" in text.lower() and "is not healthy" in text, text
    r = CliRunner().invoke(main, ["history", "--env", dep.env, "--state-dir", str(dep.state)])
    assert "failed" in r.output.splitlines()[0], r.output

    # the same commit is not retried: web is held, no container is created
    with ContainerCreates(docker_client, dep.env) as creates:
        code, out = dep.cli("apply", "--health-timeout", "1")
    assert code == 0, out  # operations.md: a pass that only holds exits 0
    assert "service web held" in out, out
    assert "start container" not in out, out
    assert creates.names == [], creates.names
    code, plan = dep.plan()
    assert code == 0, plan  # nothing to change: held services stay as they run
    assert plan["actions"] == [] and any("service web held" in n for n in plan["notes"]), plan
    assert dep.revisions("web") == ["v1"]

    # `reconcile retry` lets the next pass try again (and fail again)
    assert "cleared 1 failure" in retry(dep, "web")
    code, plan = dep.plan()
    assert code == 2 and "start-container" in {a["kind"] for a in plan["actions"]}, plan
    with ContainerCreates(docker_client, dep.env) as creates, Traffic(dep.url()) as traffic:
        code, out = dep.cli("apply", "--health-timeout", "1")
    assert code == 1 and "is not healthy" in out, out
    assert [n for n in creates.names if "-web-v2-" in n], creates.names
    traffic.assert_served()
    assert set(traffic.revisions) == {"revision=v1"}
    assert {c.name for c in dep.containers("web")} == old

    # a fixed commit applies cleanly
    dep.edit("services/web.yaml", UNHEALTHY_V2, "  - revision: v2\n    weight: 100\n",
             "web v2, healthy")
    converge(dep, docker_client)
    assert dep.revisions("web") == ["v2"]
    assert answers(dep, 10) == {"revision=v2": 10}
    # checked last so that a failure here does not hide the checks above
    assert "is not healthy: GET /healthz: HTTP 503" in recorded and "fail_health=1" in recorded, (
        f"history does not say why web failed: {recorded}")


def test_unhealthy_container_of_an_interrupted_pass_is_removed(
        dep: Deployment, docker_client: docker.DockerClient) -> None:
    """A pass killed in the health gate of an unhealthy release leaves its container; the
    next pass gates it before it gets traffic, and removes it when it fails."""
    old = {c.name for c in dep.containers("web")}
    commit = dep.edit("services/web.yaml", "  - revision: v1\n    weight: 100\n", UNHEALTHY_V2,
                      "web v2 (fails its health check)")
    proc = ApplyProcess.start(dep)
    proc.kill_when(lambda: bool(docker_client.containers.list(
        filters={"label": f"{identity.COMMIT}={commit}", "status": "running"})),
        "the new container running")
    assert_routes_only_to_healthy(dep, docker_client)

    with Traffic(dep.url()) as traffic:
        code, out = dep.cli("apply", "--health-timeout", "1")
    assert code == 1 and "is not healthy: GET /healthz: HTTP 503" in out, out
    traffic.assert_served()
    assert set(traffic.revisions) == {"revision=v1"}, traffic.revisions
    kept = {c.name for c in dep.containers("web")} - old
    assert_routes_only_to_healthy(dep, docker_client)

    dep.edit("services/web.yaml", UNHEALTHY_V2, "  - revision: v2\n    weight: 100\n",
             "web v2, healthy")
    converge(dep, docker_client)
    assert answers(dep, 10) == {"revision=v2": 10}
    # checked last so that a failure here does not hide the checks above
    assert not kept, f"the failed pass kept the unhealthy container {kept}"


# --------------------------------------------------------------------------- 2. haproxy -c


def test_config_rejected_by_haproxy_changes_nothing(dep: Deployment,
                                                    docker_client: docker.DockerClient) -> None:
    paths = dep.haproxy.paths
    before = paths.config.read_bytes()
    procs = dep.haproxy.procs()
    missing = dep.root / "no-such-dir" / "site.pem"
    https_port = free_port()
    dep.edit("loadbalancer.yaml", "frontends:\n",
             f"frontends:\n  - name: https\n    bind: \"127.0.0.1:{https_port}\"\n"
             f"    tls:\n      certificate: {missing}\n    default_service: web\n",
             "https frontend, certificate missing")

    with Traffic(dep.url()) as traffic:
        code, out = dep.apply()
    assert code == 1, out
    assert "haproxy -c rejected the new config; nothing installed" in out, out
    rejected = out
    assert paths.config.read_bytes() == before
    assert not [p.name for p in paths.root.iterdir() if p.name.endswith(".new")]
    after = dep.haproxy.procs()
    assert (after.reloads, after.current_pids) == (procs.reloads, procs.current_pids)
    traffic.assert_served()
    assert answers(dep, 10) == {"revision=v1": 10}
    history = History(dep.state)
    assert history.run(history.last_run())["status"] == "failed"

    # the fix: a certificate that exists
    cert = dep.root / "site.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(cert), "-out", str(cert)],
                   check=True, capture_output=True)
    dep.edit("loadbalancer.yaml", str(missing), str(cert), "certificate fixed")
    converge(dep, docker_client)
    assert f"ssl crt {cert}" in paths.config.read_text()
    assert paths.last_good.read_bytes() == before
    # haproxy's own message, naming the file (checked last: it does not hide the above)
    assert "unable to stat SSL certificate" in rejected and str(missing) in rejected, rejected


# --------------------------------------------------------------------------- 3. crash safety

# Where the killed pass is: "created" is as soon as a container of the new commit exists
# (`docker ps -a`: between create and start), "running" as soon as one runs (`docker ps`:
# in its health gate, before any server is added); "after-N" is as soon as step N is
# recorded in the history.
# The switch of web (2 replicas) is: 1-2 start, 3-4 add-server, 5 configure (reload),
# 6-7 drain, 8-9 remove-server (runtime API), 10 configure (write the file, no reload),
# 11-12 remove-container.
KILL_POINTS = ["created", "running", "after-2", "after-3", "after-5", "after-6", "after-8",
               "after-9", "after-10"]


class TestCrashSafety:
    greeting = 0

    @pytest.fixture(scope="class")
    @classmethod
    def cdep(cls, tmp_path_factory: pytest.TempPathFactory,
             docker_client: docker.DockerClient) -> Iterator[Deployment]:
        d = _deploy(tmp_path_factory.mktemp("crash"), docker_client, web_replicas=2)
        try:
            yield d
        finally:
            d.cleanup()

    def switch(self, dep: Deployment) -> str:
        """Commit a new release config of web (a new greeting): a fresh switch."""
        TestCrashSafety.greeting += 1
        f = dep.repo / "services" / "web.yaml"
        text = re.sub(r"GREETING: .*", f"GREETING: crash {self.greeting}", f.read_text())
        return dep.write("services/web.yaml", text, f"greeting {self.greeting}")

    @pytest.mark.parametrize("point", KILL_POINTS)
    def test_kill_mid_switch(self, cdep: Deployment, docker_client: docker.DockerClient,
                             point: str) -> None:
        dep = cdep
        commit = self.switch(dep)
        code, plan = dep.plan()
        assert code == 2, plan
        kinds = [a["kind"] for a in plan["actions"]]
        assert kinds == ["start-container"] * 2 + ["add-server"] * 2 + ["configure-haproxy"] + [
            "drain-server"] * 2 + ["remove-server"] * 2 + ["configure-haproxy"] + [
            "remove-container"] * 2, kinds
        history = History(dep.state)
        last = history.last_run()

        def new_container(status: str | None) -> bool:
            labels = {"label": f"{identity.COMMIT}={commit}"}
            # sparse: no inspect per container (one may be removed between list and inspect)
            return bool(docker_client.containers.list(
                all=status is None, sparse=True,
                filters={**labels, "status": status} if status else labels))

        def after(n: int) -> bool:
            return history.step_count(last) >= n

        with Traffic(dep.url()) as traffic:
            proc = ApplyProcess.start(dep)
            if point in ("created", "running"):
                proc.kill_when(lambda: new_container(None if point == "created" else point),
                               point)
                # killed before any server was added for it
                assert history.step_count(last) <= 2, history.steps(history.last_run())
            else:
                n = int(point.split("-")[1])
                proc.kill_when(lambda: after(n), point)
            # HAProxy points only at running, healthy containers; the service answers
            assert_routes_only_to_healthy(dep, docker_client)
            answers(dep, 10)
        traffic.assert_served()
        assert history.run(history.last_run())["status"] == "running"  # it never finished
        history.close()

        converge(dep, docker_client)
        greeting = f"greeting=crash {self.greeting}"
        assert all(greeting in dep.get("/")[1] for _ in range(10))

    def test_lock(self, cdep: Deployment, docker_client: docker.DockerClient) -> None:
        dep = cdep
        lock = dep.state / f"{dep.env}.lock"
        # held by this process
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            code, out = dep.cli("apply", "--lock-timeout", "1")
            fcntl.flock(f, fcntl.LOCK_UN)
        assert code == 1, out
        assert f"pid {os.getpid()}" in out and str(lock) in out, out

        # held by a pass that is stopped mid-run, then killed
        self.switch(dep)
        history = History(dep.state)
        last = history.last_run()
        proc = ApplyProcess.start(dep)
        try:
            wait_for(lambda: history.step_count(last) >= 1 or proc.proc.poll() is not None,
                     timeout=60, what="the first step")
            proc.proc.send_signal(signal.SIGSTOP)
            assert proc.proc.poll() is None, proc.output()
            t0 = time.monotonic()
            code, out = dep.cli("apply", "--lock-timeout", "1")
            assert code == 1, out
            assert f"pid {proc.pid}" in out and str(lock) in out, out
            assert time.monotonic() - t0 < 15
            assert_routes_only_to_healthy(dep, docker_client)
            answers(dep, 5)
        finally:
            proc.kill()  # SIGKILL ends a stopped process too
        history.close()
        # the kernel released the lock with the process
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
        converge(dep, docker_client)


# --------------------------------------------------------------------------- 3b. LB down


@pytest.mark.parametrize("replicas", [1, 2])
def test_haproxy_stopped_and_containers_removed(tmp_path: Path, docker_client: docker.DockerClient,
                                                replicas: int) -> None:
    """HAProxy stopped and every container removed (a host rebuilt, or cleaned up by
    hand): the next pass starts new containers on new ports and starts HAProxy on a
    config naming them. HAProxy's server-state file of the old process names the same
    servers at the old ports, and HAProxy applies a state file's address and port over
    the config's: the pass must not start HAProxy with it. One replica and all of two."""
    dep = _deploy(tmp_path, docker_client, web_replicas=replicas)
    try:
        # A change while HAProxy runs: its config is written and the state file saved.
        dep.edit("environments/staging.yaml", "LOG_LEVEL: debug", "LOG_LEVEL: info")
        code, out = dep.apply()
        assert code == 0, out
        assert dep.haproxy.paths.server_state.exists()
        old = {c.name for c in dep.containers("web")}
        assert len(old) == replicas
        dep.haproxy.stop()
        for c in dep.containers():
            c.remove(force=True)
        code, out = dep.apply()
        assert code == 0, out
        assert dep.get("/")[0] == 200
        assert {c.name for c in dep.containers("web")} == old  # same names, new ports
        assert_servers_point_at_containers(dep, docker_client)
        assert_routes_only_to_healthy(dep, docker_client)
        converge(dep, docker_client)
    finally:
        dep.cleanup()


# --------------------------------------------------------------------------- 4. dockerd


def test_dockerd_restart_between_passes(dep: Deployment) -> None:
    """Last in the file: the engine stops and starts every container."""
    # without live restore every container stops with the daemon (the harder case)
    assert dep.client.info()["LiveRestoreEnabled"] is False
    before = {c.name: c.ports for c in dep.containers()}
    for c in dep.containers():
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", c.name
        bindings = [b for bs in c.attrs["HostConfig"]["PortBindings"].values() for b in bs]
        assert bindings and all(b["HostPort"] for b in bindings), (c.name, bindings)
    with restarted_dockerd() as daemon:
        client = docker.from_env(timeout=30)
    try:
        dep.client = client  # the session client's connections died with the daemon
        now = DockerDaemon.find()  # restored exactly as /proc showed it
        assert now.pid != daemon.pid
        assert (now.argv, now.exe, now.cwd, now.env, now.log) == (
            daemon.argv, daemon.exe, daemon.cwd, daemon.env, daemon.log)

        def serving() -> bool:
            try:
                return dep.get("/")[0] == 200
            except OSError:
                return False

        def restored() -> bool:  # the engine restarts them in the background
            cs = dep.containers()
            return all(c.status == "running" and c.attrs["State"].get("Health", {}).get(
                "Status", "none") in ("healthy", "none") for c in cs) and len(cs) == len(before)

        def haproxy_sees_them_up() -> bool:  # its own checks, not only Docker's view
            stats = [s for s in dep.haproxy.server_stats() if s.backend == "be_web"]
            return bool(stats) and all(s.status.startswith("UP") for s in stats)

        wait_for(serving, timeout=60, what="web to answer through HAProxy again")
        wait_for(restored, timeout=60, what="every container to run, healthy, again")
        # A server whose checks failed while the engine was down may go DOWN (fall 3)
        # just after its container is back, then UP again (rise 2): wait for HAProxy.
        wait_for(haproxy_sees_them_up, timeout=30, what="HAProxy to see every web server UP")
        assert {c.name: c.ports for c in dep.containers()} == before  # on the same ports
        answers(dep, 10)
        converge(dep, client)
        assert_servers_point_at_containers(dep, client)
        assert dep.revisions("web") == ["v1"]
    finally:
        dep.cleanup()  # with the new client; the fixture's cleanup then finds nothing
