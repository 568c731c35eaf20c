"""The LB agent of etcd mode against a real 3-member TLS etcd cluster, a real HAProxy
(the agent's own, embedded) and app containers on the local Docker engine.

The test plays the leader: it runs the app containers (v1 and v2 of sample-app) and
publishes the pools and the structure with ``publish_pools``. Under `hey` load through
the agent's HAProxy it switches the pool from v1 to v2 (v2 added at full weight with v1
drained to weight 0, then v1 left out: deleted), with no failed request and no reload;
kills 2 of 3 members (no quorum) and sees HAProxy serve on; publishes a weight change
once quorum is back and sees it applied; then a change of structure reloads once and
keeps the weights. A restarted agent with etcd down serves the config it had installed.
``publish_pools`` writes only what changed and nothing once its fence is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from deploy_support import free_port, wait_for
from etcd_support import EtcdCluster
from load_support import HeyLoad
from support import desired, spec

from reconciler import identity
from reconciler.cluster.etcd import Compare, Etcd, Op, created_never, lease_is
from reconciler.cluster.keys import Keys
from reconciler.cluster.lbconfig import Pool, PoolServer, Publication, structure_of
from reconciler.cluster.publish import NoFence, lb_reports, publish_pools
from reconciler.coordination import EtcdSettings
from reconciler.errors import FencedOut
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.model import DesiredState, Frontend, HealthCheck, Release, Service, Timeouts

LB = "lb1"
APP = "app1"
INSTANCE = "lbtest"
HEALTH = HealthCheck(kind="http", path="/healthz", interval_ms=500, timeout_ms=500)


@dataclass
class World:
    cluster: EtcdCluster
    client: Etcd
    keys: Keys
    port: int
    state: Path
    log: Path
    agent: subprocess.Popen[bytes] | None
    apps: dict[str, tuple[str, int, str]]  # container -> (address, port, revision)

    @property
    def haproxy(self) -> HAProxy:
        return HAProxy(HAProxyPaths.embedded(self.state, self.keys.environment))

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def publish(self, servers: list[tuple[str, int, str]], server_ms: int = 30000) -> int:
        """Publish the web pool [(container, weight, state)] and the structure (the web
        backend's server timeout ``server_ms``); the revision of the write."""
        pool = Pool("be_web", "web", tuple(
            PoolServer(identity.server_name(APP, c), APP, c, self.apps[c][0], self.apps[c][1],
                       weight, self.apps[c][2], state)  # type: ignore[arg-type]
            for c, weight, state in sorted(servers)))
        d = _desired(self.keys.environment, self.port, server_ms)
        pub = Publication((structure_of(d, d.loadbalancers[0]),), (pool,))
        return publish_pools(self.client, self.keys, pub, NoFence()).revision

    def applied(self) -> int:
        report = lb_reports(self.client, self.keys).get(LB)
        return report.revision if report else 0

    def wait_applied(self, revision: int, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        wait_for(lambda: self.applied() >= revision, timeout=timeout,
                 what=f"the agent to apply revision {revision}\n{self.log_text()}")
        return time.monotonic() - t0

    def log_text(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def start_agent(self) -> None:
        c = self.cluster
        cmd = [sys.executable, "-m", "reconciler", "agent", "--role", "lb",
               "--etcd", ",".join(c.endpoints), "--etcd-ca", str(c.pki.ca),
               "--etcd-cert", str(c.pki.client_cert), "--etcd-key", str(c.pki.client_key),
               "--env", self.keys.environment, "--instance", INSTANCE, "--host", LB,
               "--state-dir", str(self.state), "--health-timeout", "15"]
        with self.log.open("ab") as log:
            self.agent = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *cmd],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          env=os.environ.copy())

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(timeout=15)

    def served(self) -> set[str]:
        """The revisions 20 requests got."""
        out = set()
        for _ in range(20):
            with urllib.request.urlopen(self.url(), timeout=5) as r:
                out.add(r.read().decode().split()[0])
        return out

    def weights(self) -> dict[str, int]:
        return {s.server: s.weight for s in self.haproxy.observe().servers}


def _desired(env: str, port: int, server_ms: int = 30000) -> DesiredState:
    web = Service("web", tuple(Release(r, 100, spec(f"sample-app:{r}", health=HEALTH))
                               for r in ("v1",)), replicas=2, hosts=(APP,), drain_timeout_s=5,
                  timeouts=Timeouts(server_ms=server_ms))
    fe = Frontend("http", "127.0.0.1", port, (), default_service="web")
    return desired(web, hosts=(APP,), lb_hosts=(LB,), frontends=(fe,), env=env)


def _run_apps(client: docker.DockerClient, tag: str) -> dict[str, tuple[str, int, str]]:
    out = {}
    for rev in ("v1", "v2"):
        for i in range(2):
            name = f"{tag}-{rev}-{i}"
            c = client.containers.run(f"sample-app:{rev}", name=name, detach=True,
                                      labels={"io.reconciler.test": tag},
                                      ports={"8080/tcp": ("127.0.0.1", None)})
            c.reload()
            out[name] = ("127.0.0.1", int(c.ports["8080/tcp"][0]["HostPort"]), rev)
    for address, port, _ in out.values():
        wait_for(lambda a=address, p=port: _healthy(a, p), timeout=15, what="app up")
    return out


def _healthy(address: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          docker_client: docker.DockerClient) -> Iterator[World]:
    root = tmp_path_factory.mktemp("etcdlb")
    cluster = EtcdCluster.start(root / "etcd")
    tag = f"etlb{uuid.uuid4().hex[:6]}"
    settings = EtcdSettings(tuple(cluster.endpoints), str(cluster.pki.ca),
                            str(cluster.pki.client_cert), str(cluster.pki.client_key))
    w = World(cluster, Etcd(settings), Keys(INSTANCE, f"e{tag}"), free_port(), root / "state",
              root / "agent.log", None, {})
    try:
        w.apps = _run_apps(docker_client, tag)
        w.start_agent()
        yield w
    finally:
        w.stop_agent()
        w.haproxy.stop()
        for c in docker_client.containers.list(all=True,
                                               filters={"label": f"io.reconciler.test={tag}"}):
            c.remove(force=True)
        cluster.close()


def test_switch_under_load_without_reload_and_serving_on_without_quorum(world: World) -> None:
    w = world
    v1 = sorted(c for c in w.apps if w.apps[c][2] == "v1")
    v2 = sorted(c for c in w.apps if w.apps[c][2] == "v2")
    first = w.wait_applied(w.publish([(c, 100, "ready") for c in v1]))
    assert w.served() == {"revision=v1"}
    reloads = w.haproxy.procs().reloads
    timings = {"first (start HAProxy)": first}
    with HeyLoad(w.url(), concurrency=10, qps=80, max_duration_s=120) as load:
        # the switch: v2 in at full weight, v1 drained (weight 0), then v1 left out
        both = [(c, 0, "drain") for c in v1] + [(c, 100, "ready") for c in v2]
        timings["v2 in, v1 drained"] = w.wait_applied(w.publish(both))
        timings["v1 removed"] = w.wait_applied(w.publish([(c, 100, "ready") for c in v2]))
        wait_for(lambda: w.served() == {"revision=v2"}, timeout=10, what="v2 served")
        assert set(w.weights()) == {identity.server_name(APP, c) for c in v2}
        # no quorum: HAProxy serves on with the last applied pool
        w.cluster.kill(1)
        w.cluster.kill(2)
        try:
            wait_for(lambda: "HAProxy keeps serving the last applied pools" in w.log_text(),
                     timeout=20, what=f"the agent to notice the lost quorum\n{w.log_text()}")
            assert w.served() == {"revision=v2"}
        finally:
            w.cluster.revive()
        heavier = [(v2[0], 150, "ready"), (v2[1], 50, "ready")]
        timings["weights after quorum"] = w.wait_applied(w.publish(heavier), timeout=40)
        report = load.stop()
    print(report.summary())
    print("publish -> applied: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    assert report.failed == 0 and report.non_2xx == 0, report.summary()
    assert report.rate >= 500, report.summary()
    assert w.haproxy.procs().reloads == reloads  # servers and weights: runtime API only
    assert w.weights() == {identity.server_name(APP, v2[0]): 150,
                           identity.server_name(APP, v2[1]): 50}
    config = w.haproxy.paths.config.read_text()  # persisted for the next reload
    assert f"{identity.server_name(APP, v2[1])} 127.0.0.1:{w.apps[v2[1]][1]} weight 50" in config
    # a change of structure (the backend's server timeout) reloads, once, and the weights
    # written into the config survive it
    w.wait_applied(w.publish(heavier, server_ms=20000))
    assert w.haproxy.procs().reloads == reloads + 1
    assert "timeout server 20s" in w.haproxy.paths.config.read_text()
    assert w.weights() == {identity.server_name(APP, v2[0]): 150,
                           identity.server_name(APP, v2[1]): 50}
    assert w.served() == {"revision=v2"}


def test_a_restarted_agent_with_etcd_down_serves_its_installed_config(world: World) -> None:
    w = world
    w.stop_agent()
    w.haproxy.stop()
    w.cluster.kill(1)
    w.cluster.kill(2)
    try:
        w.start_agent()
        wait_for(lambda: _serves(w), timeout=20, what=f"HAProxy started\n{w.log_text()}")
        assert w.served() == {"revision=v2"}
        assert "started HAProxy on its installed config" in w.log_text()
    finally:
        w.cluster.revive()


def _serves(w: World) -> bool:
    try:
        return bool(w.served())
    except OSError:
        return False



@dataclass(frozen=True)
class LeaderKeyFence:
    """A fence as the leader module gives it: the leader key is bound to our lease."""

    key: str
    lease: int

    def compares(self) -> list[Compare]:
        return [lease_is(self.key, self.lease)]


def test_publish_writes_only_what_changed_in_one_fenced_transaction(world: World) -> None:
    client = world.client
    keys = Keys(INSTANCE, f"{world.keys.environment}-pub")
    d = _desired(keys.environment, world.port)
    st = structure_of(d, d.loadbalancers[0])
    pool = Pool("be_web", "web", ())
    lease = client.grant(5)
    assert client.txn([created_never(keys.leader)], [Op("put", keys.leader, b"me", lease=lease)])
    fence = LeaderKeyFence(keys.leader, lease)
    first = publish_pools(client, keys, Publication((st,), (pool,)), fence)
    assert first.written == (keys.structure("edge"), keys.pool("be_web"))
    again = publish_pools(client, keys, Publication((st,), (pool,)), fence)
    assert not again.changed and again.revision == first.revision  # no transaction at all
    api = Pool("be_api", "api", ())
    both = publish_pools(client, keys, Publication((st,), (api,)), fence)
    assert (both.written, both.deleted) == ((keys.pool("be_api"),), (keys.pool("be_web"),))
    client.revoke(lease)  # the leader lost its lease: nothing more is published
    with pytest.raises(FencedOut):
        publish_pools(client, keys, Publication((st,), (pool,)), fence)
    assert client.get(keys.pool("be_web")) is None
