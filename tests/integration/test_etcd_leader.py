"""etcd mode: two `reconcile watch` replicas of one environment elect a leader in a real
3-member TLS etcd cluster (tests/etcd_support.py) and only the leader acts.

One small environment (web and api, one container each, on the local engine, behind an
HAProxy both replicas manage through --haproxy-* paths: the LB host they share), each
replica with its own state dir (its own history), both with the same instance name.
The tests run in order on one world: who leads; kill -9 the leader (the standby takes
over and converges a new release; takeover seconds printed); SIGSTOP the leader past
its TTL in the middle of a pass (the other takes over; the resumed one takes no step);
one etcd member down (work goes on); two down (no quorum: the leader stops acting,
nothing is torn down, traffic flows; work resumes with quorum).
"""

from __future__ import annotations

import calendar
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment, free_port, wait_for
from etcd_support import EtcdCluster
from repo_support import git
from watch_support import Watch

from reconciler import identity
from reconciler.cluster.etcd import Etcd
from reconciler.cluster.keys import Keys
from reconciler.coordination import EtcdSettings
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths

pytestmark = pytest.mark.integration

INSTANCE = "etcdtest"
TTL = 5

WEB = """apiVersion: reconciler/v1
kind: Service
name: web
image: sample-app
releases:
  - revision: {revision}
    weight: 100
replicas: 1
hosts: [local]
port: 8080
health:
  http: {path}
  interval: 1s
  timeout: {timeout}
  retries: 3
env:
  GREETING: hello from web
  DELAY_PATHS: "{delay}"
  FAIL_HEALTH: "{fail}"
stop_grace_period: 2s
loadbalancing:
  drain_timeout: 2s
"""


def web_yaml(revision: str, slow_health_ms: int = 0, unhealthy: bool = False) -> str:
    """web at ``revision``; with ``slow_health_ms``, its health check path answers that
    late (a pass then waits that long at its health gate, before it adds the server);
    ``unhealthy``: its health check fails (the pass fails web, held at that commit)."""
    fail = "1" if unhealthy else ""
    if slow_health_ms:
        return WEB.format(revision=revision, path="/slow", delay=f"/slow={slow_health_ms}",
                          timeout=f"{slow_health_ms // 1000 + 3}s", fail=fail)
    return WEB.format(revision=revision, path="/healthz", timeout="1s", delay="/none=0",
                      fail=fail)


class Replica(Watch):
    """A `reconcile watch` replica with its own state dir, of the shared instance."""

    def __init__(self, w: World, name: str) -> None:
        self.state = w.root / f"replica-{name}"
        super().__init__(w.dep, "--state-dir", str(self.state), "--instance", INSTANCE,
                         *w.haproxy_flags, drift=3.0)
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, event: str, since: float = 0.0) -> list[dict[str, object]]:
        """Log records of ``event`` logged at or after wall time ``since``."""
        out = []
        for rec in self.logs():
            stamp = str(rec["time"])  # 2026-12-01T10:00:00.123Z
            t = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
            if rec.get("event") == event and t + int(stamp[20:23]) / 1000 >= since:
                out.append(rec)
        return out

    def _query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        """Rows of this replica's history (none while it has none)."""
        db = self.state / "history.sqlite"
        if not db.exists():
            return []
        con = sqlite3.connect(db)
        try:
            return list(con.execute(sql, args))
        except sqlite3.OperationalError:
            return []  # the schema is being made
        finally:
            con.close()

    def steps(self) -> int:
        """How many steps this replica's history holds."""
        return len(self._query("SELECT step FROM steps"))

    def steps_of(self, sha: str) -> int:
        return len(self._query("SELECT step FROM steps JOIN runs ON runs.id = run_id "
                               "WHERE commit_id = ?", sha))

    def run_status(self, sha: str) -> list[tuple[str, str]]:
        """(status, summary) of this replica's runs of ``sha``, oldest first."""
        return [(str(a), str(b)) for a, b in self._query(
            "SELECT status, summary FROM runs WHERE commit_id = ? ORDER BY id", sha)]


@dataclass
class World:
    root: Path
    cluster: EtcdCluster
    dep: Deployment
    haproxy: HAProxyPaths
    replicas: list[Replica] = field(default_factory=list)

    @property
    def haproxy_flags(self) -> list[str]:
        return ["--haproxy-config", str(self.haproxy.config), "--haproxy-socket",
                str(self.haproxy.stats_socket), "--haproxy-master-socket",
                str(self.haproxy.master_socket)]

    def etcd(self) -> Etcd:
        p = self.cluster.pki
        return Etcd(EtcdSettings(tuple(self.cluster.endpoints), str(p.ca), str(p.client_cert),
                                 str(p.client_key)))

    @property
    def keys(self) -> Keys:
        return Keys(INSTANCE, self.dep.env)

    def leader_value(self) -> str | None:
        e = self.etcd()
        try:
            kv = e.get(self.keys.leader)
        finally:
            e.close()
        return None if kv is None else kv.value.decode()

    def leader(self) -> Replica | None:
        """The live replica whose id the leader key holds."""
        value = self.leader_value()
        if value is None:
            return None
        pid = int(value.split("-")[-2])
        return next((r for r in self.replicas if r.pid == pid and r.proc.poll() is None), None)

    def standbys(self) -> list[Replica]:
        lead = self.leader()
        return [r for r in self.replicas if r is not lead and r.proc.poll() is None]

    def push_web(self, revision: str, slow_health_ms: int = 0, unhealthy: bool = False) -> str:
        (self.dep.repo / "services" / "web.yaml").write_text(
            web_yaml(revision, slow_health_ms, unhealthy))
        sha, _ = self.replicas[0].push(f"web {revision}")
        return sha

    def serving(self, revision: str) -> bool:
        try:
            code, body = self.dep.get("/")
        except OSError:
            return False
        return code == 200 and f"revision={revision}" in body

    def applied(self) -> dict[str, object] | None:
        """The ``applied`` key the leader shares: its last commit and held services."""
        e = self.etcd()
        try:
            kv = e.get(self.keys.applied)
        finally:
            e.close()
        return None if kv is None else dict(json.loads(kv.value))

    def web_revisions(self) -> list[str]:
        return self.dep.revisions("web")


def _start_haproxy(etc: Path) -> HAProxyPaths:
    """The LB host's HAProxy, started as an operator would (master-worker)."""
    etc.mkdir()
    paths = HAProxyPaths.external(etc / "haproxy.cfg", etc / "admin.sock", etc / "master.sock")
    paths.config.write_text(
        "global\n"
        f"    stats socket {paths.stats_socket} mode 600 level admin expose-fd listeners\n"
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
        "    timeout server 5s\n"
        f"frontend placeholder\n    bind 127.0.0.1:{free_port()}\n")
    subprocess.run(["haproxy", "-W", "-D", "-S", f"{paths.master_socket},mode,600", "-f",
                    str(paths.config), "-p", str(etc / "haproxy.pid")], check=True)
    wait_for(HAProxy(paths).running, what="the LB host's HAProxy")
    return paths


def _etcd_mode(w: World) -> None:
    p = w.cluster.pki
    inventory = w.dep.repo / "inventory.yaml"
    endpoints = ", ".join(w.cluster.endpoints)
    inventory.write_text(inventory.read_text() + f"""environments:
  {w.dep.env}:
    mode: etcd
    etcd:
      endpoints: [{endpoints}]
      ca: {p.ca}
      cert: {p.client_cert}
      key: {p.client_key}
      lease_ttl: {TTL}
""")
    (w.dep.repo / "services" / "web.yaml").write_text(web_yaml("v1"))
    w.dep.write("inventory.yaml", inventory.read_text(), message="etcd mode")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          docker_client: docker.DockerClient) -> Iterator[World]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    root = tmp_path_factory.mktemp("etcd-leader")
    cluster = EtcdCluster.start(root / "etcd")
    dep = Deployment(root, docker_client)
    haproxy = _start_haproxy(root / "lb-host")
    w = World(root, cluster, dep, haproxy)
    try:
        _etcd_mode(w)
        w.replicas += [Replica(w, "a"), Replica(w, "b")]
        wait_for(lambda: w.serving("v1"), timeout=60, what="first deploy by the leader")
        yield w
    finally:
        for r in w.replicas:
            if r.proc.poll() is None:
                os.kill(r.pid, signal.SIGCONT)
                r.stop()
        cluster.close()
        pid = int((haproxy.root / "haproxy.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        for c in dep.containers():
            c.remove(force=True)


def test_exactly_one_replica_leads_and_status_names_it(world: World) -> None:
    lead = wait_for(world.leader, timeout=15, what="a leader")
    (standby,) = world.standbys()
    value = world.leader_value()
    assert wait_for(lambda: standby.events("standby"), timeout=10, what="standby logged")
    assert all(e["leader"] == value for e in standby.events("standby"))
    assert lead.events("leader") and not standby.events("leader")
    assert lead.steps() > 0 and standby.steps() == 0  # the standby made no pass at all
    assert "\nreconcile_leading 1.0" in lead.metrics()
    assert "\nreconcile_leading 0.0" in standby.metrics()
    code, out = world.dep.cli("status", "--instance", INSTANCE, *world.haproxy_flags)
    assert code == 0, out
    assert f"mode etcd: leader is {value}" in out


def test_kill_9_of_the_leader_the_standby_takes_over_and_converges(world: World) -> None:
    lead = wait_for(world.leader, timeout=15, what="a leader")
    (standby,) = world.standbys()
    old = world.leader_value()
    t0 = time.monotonic()
    lead.proc.kill()
    lead.proc.wait()
    wait_for(lambda: world.leader_value() not in (None, old), timeout=3 * TTL,
             what="the standby's leader key")
    took = time.monotonic() - t0
    print(f"\ntakeover after kill -9: {took:.2f}s (lease TTL {TTL}s)")
    assert world.leader() is standby
    world.push_web("v2")
    wait_for(lambda: world.serving("v2"), timeout=60, what="v2 served by the new leader")
    wait_for(lambda: world.web_revisions() == ["v2"], timeout=30, what="v1 removed")
    world.replicas.append(Replica(world, "c"))  # a standby again for the tests after this
    wait_for(lambda: world.replicas[-1].events("standby"), timeout=20, what="c stands by")


def test_a_leader_paused_past_its_ttl_takes_no_step_after_it_resumes(world: World) -> None:
    paused = wait_for(world.leader, timeout=15, what="a leader")
    (other,) = world.standbys()
    sha = world.push_web("v3", slow_health_ms=6000)
    # In the middle of its pass: it started the new container and waits at the gate.
    wait_for(lambda: paused.steps_of(sha) > 0, timeout=30, what="the leader's first step")
    os.kill(paused.pid, signal.SIGSTOP)
    steps_at_pause = paused.steps()
    wait_for(lambda: world.leader() is other, timeout=3 * TTL, what="the other takes over")
    wait_for(lambda: any(s == "ok" for s, _ in other.run_status(sha)), timeout=60,
             what="the new leader's pass of v3")
    assert world.serving("v3")
    resumed_at = time.time()
    os.kill(paused.pid, signal.SIGCONT)
    wait_for(lambda: paused.events("lost-leadership", resumed_at - 1), timeout=20,
             what="the resumed replica saying it lost leadership")
    status = wait_for(lambda: [r for r in paused.run_status(sha) if r[0] != "running"],
                      timeout=60, what="the resumed replica's pass to end")
    assert paused.steps() == steps_at_pause, f"the resumed replica took steps: {status}"
    assert paused.events("fenced", resumed_at - 1)
    standby = wait_for(lambda: paused.events("standby", resumed_at - 1), timeout=10,
                       what="the resumed replica standing by")
    assert standby[-1]["leader"] == world.leader_value()
    status = paused.run_status(sha)
    assert status and status[-1][0] == "stopped" and "fenced out" in status[-1][1], status
    assert world.serving("v3") and world.web_revisions() == ["v3"]


def test_one_etcd_member_down_work_goes_on(world: World) -> None:
    lead = wait_for(world.leader, timeout=15, what="a leader")
    world.cluster.kill(0)  # the first endpoint: every client fails over
    try:
        world.push_web("v2")
        wait_for(lambda: world.serving("v2"), timeout=60, what="v2 with a member down")
        wait_for(lambda: world.web_revisions() == ["v2"], timeout=30, what="v3 removed")
        assert world.leader() is lead
    finally:
        world.cluster.revive()


def test_no_quorum_the_leader_stops_acting_and_nothing_is_torn_down(
        world: World, docker_client: docker.DockerClient) -> None:
    lead = wait_for(world.leader, timeout=15, what="a leader")
    before = sorted(c.name for c in world.dep.containers())
    since = time.time()
    world.cluster.kill(1)
    world.cluster.kill(2)
    try:
        # the leader notices between passes ("unconfirmed") or in a pass that its
        # fence stops ("fenced"), whichever comes first
        wait_for(lambda: lead.events("unconfirmed", since - 1) or lead.events("fenced", since - 1),
                 timeout=4 * TTL, what="the leader noticing it is not confirmed")
        pushed = time.time()
        sha = world.push_web("v1")
        seen = wait_for(lambda: lead.events("not-leading", pushed - 1), timeout=20,
                        what="the leader seeing the commit and not acting")
        assert seen[-1]["commit"] == sha
        # nothing torn down, traffic flows through the LB
        assert sorted(c.name for c in world.dep.containers()) == before
        assert all(c.status == "running" for c in world.dep.containers())
        for _ in range(20):
            assert world.serving("v2")
        assert lead.run_status(sha) == []
    finally:
        world.cluster.revive()
    wait_for(lambda: world.serving("v1"), timeout=60, what="work resumed with quorum")
    wait_for(lambda: world.web_revisions() == ["v1"], timeout=30, what="v2 removed")
    leader = world.leader()
    assert leader is not None and any(s == "ok" for s, _ in leader.run_status(sha))
    names = [c.name for c in world.dep.containers()]
    assert len(names) == len(set(names)) == 2
    assert {c.labels[identity.SERVICE] for c in world.dep.containers()} == {"web", "api"}


def test_a_service_the_leader_held_stays_held_after_a_takeover(world: World) -> None:
    lead = wait_for(world.leader, timeout=15, what="a leader")
    (standby,) = world.standbys()
    sha = world.push_web("v2", unhealthy=True)
    wait_for(lambda: any(s == "failed" for s, _ in lead.run_status(sha)), timeout=60,
             what="the leader's pass failing web")
    shared = wait_for(lambda: (a := world.applied()) and a["commit"] == sha and a, timeout=10,
                      what="the applied key at the failed commit")
    assert list(shared["held"]) == ["web"] and "not healthy" in shared["held"]["web"], shared
    lead.proc.kill()
    lead.proc.wait()
    wait_for(lambda: world.leader() is standby, timeout=3 * TTL, what="the standby's lead")
    adopted = wait_for(lambda: standby.events("held-adopted"), timeout=20,
                       what="the new leader adopting the hold")
    assert adopted[-1]["services"] == ["web"]
    # its pass at the same commit leaves web as it runs: no step, v1 serves on
    runs = wait_for(lambda: standby.run_status(sha), timeout=30, what="its pass at the commit")
    assert runs[-1][0] == "nothing-to-do" and standby.steps_of(sha) == 0, runs
    assert world.serving("v1") and world.web_revisions() == ["v1"]
    # `status` from another machine's state dir (no history of this) says it from etcd
    code, out = world.dep.cli("status", "--instance", INSTANCE, *world.haproxy_flags)
    assert code == 0, out
    assert f"its last commit {sha[:7]}" in out and f"HELD by the leader at {sha[:7]}: web: " \
        "host local: container" in out, out
    assert "OUTCOME DIFFERS" not in out and "HELD: " in out, out  # planned as the leader does
    world.replicas.append(Replica(world, "d"))  # a standby again for the tests after this
    world.push_web("v2")  # a newer commit: tried again
    wait_for(lambda: world.serving("v2"), timeout=60, what="v2 served")
    wait_for(lambda: world.web_revisions() == ["v2"], timeout=30, what="v1 removed")
    latest = world.push_web("v1")
    wait_for(lambda: world.serving("v1") and (world.applied() or {}).get("commit") == latest,
             timeout=60, what="v1 applied and shared")


def test_a_replica_new_to_the_environment_refuses_a_rollback_from_the_leaders_commit(
        world: World) -> None:
    lead = wait_for(world.leader, timeout=15, what="a leader")
    (fresh,) = world.standbys()
    assert fresh.steps() == 0 and not fresh._query("SELECT id FROM runs")  # no history
    latest = git(world.dep.repo, "rev-parse", "HEAD")
    older = git(world.dep.repo, "rev-parse", "HEAD~1")  # web v2, applied before
    assert (world.applied() or {}).get("commit") == latest
    git(world.dep.repo, "push", "-q", "--force", "origin", f"{older}:main")
    try:
        # refused by the replica that has never applied anything: the leader applied later
        refused = wait_for(lambda: [e for e in fresh.events("commit-rejected")
                                    if e["commit"] == older], timeout=20,
                           what="the standby refusing the rollback")
        assert "does not descend from" in str(refused[-1]["message"]), refused
        lead.proc.kill()  # and it does not apply it when it leads
        lead.proc.wait()
        wait_for(lambda: world.leader() is fresh, timeout=3 * TTL, what="the fresh replica leads")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert fresh.run_status(older) == [] and world.serving("v1")
            time.sleep(0.5)
    finally:
        git(world.dep.repo, "push", "-q", "--force", "origin", f"{latest}:main")
    world.replicas.append(Replica(world, "e"))


def test_apply_by_hand_waits_for_the_leader_and_leads_when_none_does(world: World) -> None:
    lead = wait_for(world.leader, timeout=15, what="a leader")
    value = world.leader_value()
    code, out = world.dep.cli("apply", "--instance", INSTANCE, *world.haproxy_flags,
                              "--lock-timeout", "1")
    assert code == 1 and f"replica {value} leads environment" in out, out
    for r in world.replicas:
        if r.proc.poll() is None:
            assert r.stop() == 0  # SIGTERM: the leader steps down, its lease revoked
    assert lead.events("stop")
    assert world.leader_value() is None
    code, out = world.dep.cli("apply", "--instance", INSTANCE, *world.haproxy_flags)
    assert code == 0, out
    assert world.leader_value() is None  # the command stepped down
    assert world.serving("v1")
