"""etcd mode end to end on one machine: a 3-member TLS etcd cluster, an app agent
(``reconcile agent --role app --host app1``, the local Docker engine) and an LB agent
(``--role lb``, its own embedded HAProxy), driven by the leader's etcd pass
(``reconciler.agent.drive.EtcdDrive``: it reaches no host, it publishes slices and
pools and waits for the agents' reports).

Under `hey` load through the LB agent's HAProxy: the first deploy, a release switch
v1 -> v2 (no failed request, no reload, v2 served, v1 removed by the agent), a drift
repair (a container removed by hand is started again by its agent, on the same port),
and the app agent cut off from etcd (2 of 3 members killed): its containers keep
serving, nothing is removed; when quorum returns its report is fresh again and a pass
has nothing to do. A slice it cannot read: the agent reports why and keeps what runs.
The sample repository's environment in etcd mode with agents: `reconcile apply` leads
and drives them; `plan`, `status` and `history` read their reports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment, free_port, wait_for
from etcd_support import EtcdCluster
from load_support import HeyLoad
from repo_support import edit
from support import desired, spec
from watch_support import Watch

from reconciler import identity
from reconciler.agent.drive import SILENT, EtcdDrive
from reconciler.cluster.etcd import Etcd
from reconciler.cluster.hostslice import AppReport
from reconciler.cluster.keys import Keys
from reconciler.cluster.publish import NoFence, app_reports, lb_reports, published_pools
from reconciler.coordination import EtcdSettings
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.model import DesiredState, Frontend, HealthCheck, Instance, Release, Service

LB = "lb1"
APP = "app1"
INSTANCE = "agtest"
HEALTH = HealthCheck(kind="http", path="/healthz", interval_ms=500, timeout_ms=500)


@dataclass
class World:
    cluster: EtcdCluster
    client: Etcd
    keys: Keys
    port: int
    root: Path
    docker: docker.DockerClient
    agents: dict[str, subprocess.Popen[bytes]]

    @property
    def haproxy(self) -> HAProxy:
        return HAProxy(HAProxyPaths.embedded(self.root / "lb-state", self.keys.environment))

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def desired(self, revision: str, commit: str, image: str = "",
                env: dict[str, str] | None = None) -> DesiredState:
        image = image or f"sample-app:{revision}"
        web = Service("web", (Release(revision, 100, spec(image, env, health=HEALTH)),),
                      replicas=2, hosts=(APP,), drain_timeout_s=3)
        fe = Frontend("http", "127.0.0.1", self.port, (), default_service="web")
        d = desired(web, hosts=(APP,), lb_hosts=(LB,), frontends=(fe,),
                    env=self.keys.environment, commit=commit)
        return replace(d, hosts=tuple(replace(h, address="127.0.0.1") for h in d.hosts),
                       instance=Instance(INSTANCE, adopt_unlabelled=False, label_key="k"))

    def drive(self) -> EtcdDrive:
        return EtcdDrive(self.client, self.keys, NoFence(), health_timeout_s=30)

    def log(self, role: str) -> str:
        path = self.root / f"{role}.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def start_agent(self, role: str, host: str) -> None:
        c = self.cluster
        cmd = [sys.executable, "-m", "reconciler", "agent", "--role", role,
               "--etcd", ",".join(c.endpoints), "--etcd-ca", str(c.pki.ca),
               "--etcd-cert", str(c.pki.client_cert), "--etcd-key", str(c.pki.client_key),
               "--env", self.keys.environment, "--instance", INSTANCE, "--host", host,
               "--state-dir", str(self.root / f"{role}-state"), "--health-timeout", "15"]
        with (self.root / f"{role}.log").open("ab") as log:
            self.agents[role] = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", *cmd], stdout=log,
                stderr=subprocess.STDOUT, env=os.environ.copy())

    def wait_reports(self, app: str, lb: str) -> None:
        """Until both agents reported once (a pass fails a host whose agent is silent)."""
        wait_for(lambda: app in app_reports(self.client, self.keys), timeout=20,
                 what=f"the app agent's first report\n{self.log('app')}")
        wait_for(lambda: lb in lb_reports(self.client, self.keys), timeout=20,
                 what=f"the LB agent's first report\n{self.log('lb')}")

    def stop_agents(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)

    def containers(self) -> dict[str, str]:
        """Name -> status of the environment's containers on the engine."""
        found = self.docker.containers.list(all=True, filters={
            "label": f"{identity.ENVIRONMENT}={self.keys.environment}"})
        return {c.name: c.status for c in found}

    def published(self, name: str) -> int:
        c = self.docker.containers.get(name)
        return int(c.ports["8080/tcp"][0]["HostPort"])

    def served(self) -> set[str]:
        out = set()
        for _ in range(20):
            with urllib.request.urlopen(self.url(), timeout=5) as r:
                out.add(r.read().decode().split()[0])
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          docker_client: docker.DockerClient) -> Iterator[World]:
    root = tmp_path_factory.mktemp("etcdagents")
    cluster = EtcdCluster.start(root / "etcd")
    settings = EtcdSettings(tuple(cluster.endpoints), str(cluster.pki.ca),
                            str(cluster.pki.client_cert), str(cluster.pki.client_key))
    env = f"e{uuid.uuid4().hex[:6]}"
    w = World(cluster, Etcd(settings), Keys(INSTANCE, env), free_port(), root, docker_client,
              {})
    try:
        w.start_agent("app", APP)
        w.start_agent("lb", LB)
        w.wait_reports(APP, LB)
        yield w
    finally:
        w.stop_agents()
        w.haproxy.stop()
        for name in w.containers():
            docker_client.containers.get(name).remove(force=True)
        cluster.close()


def test_deploy_switch_drift_and_cut_off_under_load(world: World) -> None:
    w = world
    first = w.drive().run(w.desired("v1", "c1"))
    assert not first.failures, first.failures
    wait_for(lambda: w.served() == {"revision=v1"}, timeout=20, what="v1 served")
    v1 = set(w.containers())
    assert len(v1) == 2 and set(w.containers().values()) == {"running"}
    reloads = w.haproxy.procs().reloads
    with HeyLoad(w.url(), concurrency=10, qps=80, max_duration_s=120) as load:
        t0 = time.monotonic()
        switch = w.drive().run(w.desired("v2", "c2"))
        print(f"release switch through the agents: {time.monotonic() - t0:.2f}s")
        assert not switch.failures, switch.failures
        assert w.served() == {"revision=v2"}
        v2 = set(w.containers())
        assert len(v2) == 2 and not v2 & v1  # v1 removed by the agent, v2 runs
        # drift: a container removed by hand is started again by its agent
        victim = sorted(v2)[0]
        port = w.published(victim)
        w.docker.containers.get(victim).remove(force=True)
        wait_for(lambda: w.containers().get(victim) == "running", timeout=20,
                 what=f"the agent to start {victim} again\n{w.log('app')}")
        assert w.published(victim) == port  # its server in the pools stays right
        # cut off from etcd: no quorum; the containers keep running and serving
        w.cluster.kill(1)
        w.cluster.kill(2)
        try:
            wait_for(lambda: "the containers that run keep running" in w.log("app"), timeout=20,
                     what=f"the app agent to notice\n{w.log('app')}")
            assert set(w.containers()) == v2 and set(w.containers().values()) == {"running"}
            assert w.served() == {"revision=v2"}
        finally:
            w.cluster.revive()
        back = time.time()
        wait_for(lambda: (r := app_reports(w.client, w.keys).get(APP)) and r.at > back,
                 timeout=30, what=f"a fresh report\n{w.log('app')}")
        report = load.stop()
    print(report.summary())
    assert report.failed == 0 and report.non_2xx == 0, report.summary()
    assert report.rate >= 500, report.summary()
    assert w.haproxy.procs().reloads == reloads
    again = w.drive().run(w.desired("v2", "c2"))
    assert not again.failures and not again.steps, again.steps
    assert set(w.containers()) == v2
    # a slice the agent cannot read: it says why in its report and keeps what runs
    key = w.keys.desired(APP)
    good = w.client.get(key)
    assert good is not None
    w.client.put(key, b"{")
    wait_for(lambda: "not JSON" in _report(w).error, timeout=20,
             what=f"the agent to report the bad slice\n{w.log('app')}")
    assert set(w.containers()) == v2 and set(w.containers().values()) == {"running"}
    w.client.put(key, good.value)
    wait_for(lambda: not _report(w).error, timeout=20, what="the slice applied again")


def test_a_release_failing_its_health_gate_is_undone_and_the_old_one_serves(
        world: World) -> None:
    w = world
    before = set(w.containers())
    assert len(before) == 2 and w.served() == {"revision=v2"}
    failing = {"FAIL_HEALTH": "1"}  # its /healthz answers 503
    done = w.drive().run(w.desired("v3", "c3", image="sample-app:v2", env=failing))
    assert set(done.failures) == {"web"}, done.failures
    assert "is not healthy" in done.failures["web"], done.failures
    wait_for(lambda: set(w.containers()) == before, timeout=20,
             what=f"the failed release's containers removed\n{w.log('app')}")
    assert w.served() == {"revision=v2"}


def test_an_agent_cut_off_is_a_failed_host_that_keeps_serving(world: World) -> None:
    """The app agent silent past its report lease (SIGSTOP: the leader and the LB agent
    still reach etcd, it does not): a pass leaves its host exactly as it runs (no slice
    written, its servers stay in the pools) and fails it by name; a change made
    meanwhile waits for it. Under load nothing fails, and no container is removed or
    started anew, during the silence or when it reports again; the next pass then
    rolls the change. (Before, the pass planned the host from no report: it published
    a slice starting its containers anew, then, on time-out, one without them, which
    the agent applied when it woke: it removed everything it ran.)"""
    w = world
    before = w.containers()
    assert len(before) == 2 and w.served() == {"revision=v2"}
    pools = published_pools(w.client, w.keys)
    key = w.keys.desired(APP)
    slice_before = w.client.get(key)
    assert slice_before is not None
    agent = w.agents["app"]
    marks: list[tuple[float, str]] = []
    bad: list[tuple[float, str]] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(w.url(), timeout=5) as r:
                    r.read()
            except Exception as exc:  # a diagnostic: when it failed
                bad.append((time.monotonic(), str(exc)))
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    mark = lambda what: marks.append((time.monotonic(), what))  # noqa: E731
    with HeyLoad(w.url(), concurrency=5, qps=40, max_duration_s=150) as load:
        mark("sigstop")
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: APP not in app_reports(w.client, w.keys), timeout=40,
                     what="the silent agent's report to expire with its lease")
            mark("expired")
            for revision, commit in (("v2", "c4"), ("v1", "c5")):  # nothing new; a change
                done = w.drive().run(w.desired(revision, commit))
                mark(f"pass {commit}")
                assert done.hosts == {APP: SILENT}, done
                assert not done.failures and done.plan.empty, done
            assert published_pools(w.client, w.keys) == pools
            now = w.client.get(key)
            assert now is not None and now.mod_revision == slice_before.mod_revision
            assert w.containers() == before and w.served() == {"revision=v2"}
        finally:
            os.kill(agent.pid, signal.SIGCONT)
            mark("sigcont")
        wait_for(lambda: APP in app_reports(w.client, w.keys), timeout=30,
                 what=f"the agent to report again\n{w.log('app')}")
        mark("reported")
        assert w.containers() == before  # it woke to the slice it had: nothing removed
        done = w.drive().run(w.desired("v1", "c6"))
        mark("pass c6")
        assert not done.failures and not done.hosts, done
        assert w.served() == {"revision=v1"}
        report = load.stop()
    stop.set()
    prober.join()
    t0 = marks[0][0]
    timeline = [(round(t - t0, 2), what) for t, what in sorted(marks + bad)]
    print(report.summary(), timeline)
    assert report.failed == 0 and report.non_2xx == 0, (report.summary(), timeline,
                                                        w.log("lb"), w.log("app"))
    assert len(w.containers()) == 2 and not set(w.containers()) & set(before)


def _report(w: World) -> AppReport:
    report = app_reports(w.client, w.keys).get(APP)
    assert report is not None
    return report


def test_reconcile_apply_in_etcd_mode_drives_the_agents(
        world: World, tmp_path: Path, docker_client: docker.DockerClient) -> None:
    """The sample repository's environment (web and api on host ``local``, app and LB)
    with ``mode: etcd`` and ``agents: true``: `reconcile apply` leads, publishes and
    waits for the agents; `plan`, `status` and `history` read the agents' reports."""
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    dep = Deployment(tmp_path, docker_client)
    p = world.cluster.pki
    inventory = dep.repo / "inventory.yaml"
    dep.write("inventory.yaml", inventory.read_text() + f"""environments:
  {dep.env}:
    mode: etcd
    etcd:
      endpoints: [{", ".join(world.cluster.endpoints)}]
      ca: {p.ca}
      cert: {p.client_cert}
      key: {p.client_key}
      agents: true
""", message="etcd mode with agents")
    short = Path(tempfile.mkdtemp(prefix="ag", dir="/tmp"))  # HAProxy's socket paths are short
    here = World(world.cluster, world.client, Keys(INSTANCE, dep.env), dep.port, short,
                 docker_client, {})
    try:
        # no agent runs yet: the pass fails naming the silent host and starts nothing
        code, out = dep.cli("apply", "--instance", INSTANCE, "--health-timeout", "20")
        assert code == 1, out
        assert f"note: host local: {SILENT}" in out, out
        assert f"error: LB host local: {SILENT}" in out, out
        assert not dep.containers()
        here.start_agent("app", "local")
        here.start_agent("lb", "local")
        here.wait_reports("local", "local")
        code, out = dep.cli("apply", "--instance", INSTANCE, "--health-timeout", "20")
        assert code == 0, out + here.log("app") + here.log("lb")
        assert dep.get("/")[0] == 200 and "revision=" in dep.get("/")[1]
        assert dep.get("/api/orders")[0] == 200
        assert sorted(c.labels[identity.SERVICE] for c in dep.containers()) == ["api", "web"]
        code, out = dep.cli("plan", "--instance", INSTANCE)
        assert code == 0, out  # nothing to do: observed from the agents' reports
        code, out = dep.cli("apply", "--instance", INSTANCE)
        assert code == 0 and "No changes" in out, out
        code, out = dep.cli("history", repo=False)
        assert code == 0 and "through the agents" in out, out
        code, out = dep.cli("status", "--instance", INSTANCE)
        assert code == 0 and "mode etcd" in out, out
        # a `reconcile watch` leader follows the branch and switches web to v2
        watch = Watch(dep, "--instance", INSTANCE)
        edit(dep.repo, "services/web.yaml", "revision: v1", "revision: v2")
        watch.push("web v2")
        wait_for(lambda: dep.revisions("web") == ["v2"] and "revision=v2" in dep.get("/")[1],
                 timeout=60, what=f"the watch leader to switch web\n{here.log('app')}")
        assert watch.stop() == 0
    finally:
        here.stop_agents()
        here.haproxy.stop()
        for name in here.containers():
            docker_client.containers.get(name).remove(force=True)
        shutil.rmtree(short, ignore_errors=True)
