"""etcd mode across simulated hosts (tests/hosts_support.py: a network namespace, a
dockerd and an sshd each): a 3-member TLS etcd cluster on the hosts' gateway, an app
agent on each of h1, h2, h3 (in its namespace, on its own engine), an LB agent on h4
(its own HAProxy, bound to h4's address), and two `reconcile watch` replicas on this
machine that lead through etcd and reach no host. The environment rolls one host at a
time (``rollout: {limit: 1, wait: 2s}``). The tests run in order on one world, each
under `hey` load through h4, each ending with 0 failed requests and exactly one
container per app host:

1. the first deploy (in the fixture), a release switch host by host, and drift repair
   (a container removed by hand on h2 is started again by h2's agent);
2. kill -9 of the leader in the middle of a rollout: the standby finishes it (takeover
   seconds printed);
3. h2 cut off from etcd (its namespace drops packets to the members): when its agent's
   report has expired with its lease, a new release reaches h1, h2 is
   failed by name and the rollout stops there (h3 not rolled), h2's containers keep
   serving; once it reports again, the next pass completes the rollout;
4. a canary (v3 at 0 beside v2 at 100, steps 50% then 100%) judged by the leader from
   the LB agent's reported counters is promoted: all traffic to v3; the leader killed,
   the new one goes on from the canary's state in etcd: it stays promoted;
5. one etcd member killed: a rollout goes on; two killed (no quorum): a new commit
   changes nothing and nothing is torn down; quorum back: the rollout goes on;
6. the leader paused (SIGSTOP) past its lease in the middle of a rollout: the other
   replica takes over and finishes it; resumed, the paused one is fenced out: its pass
   ends "stopped", and the world stays as the new leader left it.
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from deploy_support import free_port, wait_for
from etcd_support import EtcdCluster
from fleet_support import Fleet
from hosts_support import SimHost, SimHosts, load_image, start_hosts
from load_support import HeyLoad
from repo_support import git

from reconciler import identity
from reconciler.cluster.etcd import Etcd
from reconciler.cluster.hostslice import decode_slice
from reconciler.cluster.keys import Keys
from reconciler.coordination import EtcdSettings

pytestmark = pytest.mark.integration

INSTANCE = "fleetetcd"
TTL = 4


@dataclass
class Replica:
    """A `reconcile watch` replica of the fleet's environment, own state dir."""

    fleet: Fleet
    bare: Path
    name: str
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        log = (self.fleet.root / f"replica-{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", "--repo", str(self.bare), "--branch",
             "main", "--env", self.fleet.env, "--policy", str(self.fleet.policy),
             "--state-dir", str(self.fleet.root / f"state-{self.name}"),
             "--instance", INSTANCE, "--poll", "1", "--drift-interval", "3",
             "--health-timeout", "20", "--ui-addr", "off",
             "--metrics-addr", f"127.0.0.1:{free_port()}", "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return (self.fleet.root / f"replica-{self.name}.log").read_text()[-6000:]

    def runs(self, sha: str = "") -> list[tuple[str, str]]:
        """(status, summary) of the runs in this replica's history, oldest first, of
        commit ``sha`` only when given (none while it has no history)."""
        db = self.fleet.root / f"state-{self.name}" / "history.sqlite"
        if not db.exists():
            return []
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT status, summary, commit_id FROM runs ORDER BY id")
            return [(str(a), str(b)) for a, b, c in rows if not sha or c == sha]
        except sqlite3.OperationalError:
            return []  # the schema is being made
        finally:
            con.close()

    def summaries(self) -> list[str]:
        return [summary for _, summary in self.runs()]

    def canary_status(self) -> str:
        """The status of web's canary in this replica's history ("" when none)."""
        db = self.fleet.root / f"state-{self.name}" / "history.sqlite"
        if not db.exists():
            return ""
        con = sqlite3.connect(db)
        try:
            rows = list(con.execute("SELECT state_json FROM canaries WHERE service = 'web'"))
        except sqlite3.OperationalError:
            return ""
        finally:
            con.close()
        return str(json.loads(rows[0][0])["status"]) if rows else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class World:
    sim: SimHosts
    cluster: EtcdCluster
    fleet: Fleet
    bare: Path
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)

    @property
    def apps(self) -> list[SimHost]:
        return self.fleet.apps

    def etcd(self) -> Etcd:
        p = self.cluster.pki
        return Etcd(EtcdSettings(tuple(self.cluster.endpoints), str(p.ca), str(p.client_cert),
                                 str(p.client_key)))

    def start_agent(self, role: str, host: SimHost) -> None:
        c, f = self.cluster, self.fleet
        log = (f.root / f"agent-{host.name}.log").open("ab")
        self.agents[host.name] = self.sim.popen(
            host, sys.executable, "-m", "reconciler", "agent", "--role", role,
            "--etcd", ",".join(c.endpoints), "--etcd-ca", str(c.pki.ca),
            "--etcd-cert", str(c.pki.client_cert), "--etcd-key", str(c.pki.client_key),
            "--env", f.env, "--instance", INSTANCE, "--host", host.name,
            "--state-dir", host.state_dir, "--health-timeout", "20",
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "DOCKER_HOST": host.docker_host})

    def agent_log(self, host: SimHost) -> str:
        return (self.fleet.root / f"agent-{host.name}.log").read_text()[-4000:]

    def push(self, revision: str, message: str) -> str:
        self.fleet.revisions = [(revision, 100)]
        sha = self.fleet.write(message)
        git(self.fleet.repo, "push", "-q", "origin", "HEAD:main")
        return sha

    def leader(self) -> Replica | None:
        e = self.etcd()
        try:
            kv = e.get(Keys(INSTANCE, self.fleet.env).leader)
        finally:
            e.close()
        if kv is None:
            return None
        pid = int(kv.value.decode().split("-")[-2])
        return next((r for r in self.replicas if r.pid == pid and r.proc.poll() is None), None)

    def containers(self, host: SimHost) -> list[Any]:
        """The environment's containers on ``host``'s engine (listed again when one went
        away between the list and its inspect: an agent may be removing it)."""
        for _ in range(5):
            try:
                return self.fleet.containers(host)
            except docker.errors.NotFound:
                continue
        return self.fleet.containers(host)

    def names(self) -> dict[str, list[str]]:
        return {h.name: sorted(c.name for c in self.containers(h)) for h in self.apps}

    def revisions(self) -> dict[str, list[str]]:
        """App host -> the revisions of the environment's containers on its engine."""
        return {h.name: sorted(c.labels[identity.REVISION] for c in self.containers(h))
                for h in self.apps}

    def converged(self, revision: str) -> bool:
        return self.revisions() == {h.name: [revision] for h in self.apps} and \
            self.served() == {f"revision={revision}"}

    def served(self) -> set[str]:
        out = set()
        for _ in range(12):
            try:
                out.add(_get(self.fleet.url).split()[0])
            except OSError as exc:
                out.add(f"error: {exc}")
        return out

    def diagnostics(self) -> str:
        parts = [f"--- replica {r.name}\n{r.log()}" for r in self.replicas]
        parts += [f"--- agent {h.name}\n{self.agent_log(h)}" for h in [*self.apps, self.fleet.lb]]
        return "\n".join(parts)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("etcdfleet")
    sim = start_hosts(4, prefix="ef")
    cluster: EtcdCluster | None = None
    w: World | None = None
    try:
        cluster = EtcdCluster.start(root / "etcd", address=sim.gateway)
        h1, h2, h3, h4 = sim.hosts
        for h in (h1, h2, h3):
            for ref in ("sample-app:v1", "sample-app:v2", "sample-app:v3"):
                load_image(h, ref)
        p = cluster.pki
        fleet = Fleet(root / "fleet", sim, apps=[h1, h2, h3], lb=h4,
                      env=f"ef{uuid.uuid4().hex[:6]}", rollout={"limit": 1, "wait": "2s"},
                      coordination={"mode": "etcd", "etcd": {
                          "endpoints": cluster.endpoints, "ca": str(p.ca),
                          "cert": str(p.client_cert), "key": str(p.client_key),
                          "lease_ttl": TTL, "agents": True}})
        bare = root / "remote.git"
        git(root, "clone", "-q", "--bare", str(fleet.repo), str(bare))
        git(fleet.repo, "remote", "add", "origin", str(bare))
        w = World(sim, cluster, fleet, bare)
        for h in (h1, h2, h3):
            w.start_agent("app", h)
        w.start_agent("lb", h4)
        w.replicas += [Replica(fleet, bare, "a"), Replica(fleet, bare, "b")]
        world_ = w
        wait_for(lambda: world_.converged("v1"), timeout=120,
                 what=f"the first deploy through the agents\n{world_.diagnostics()}")
        yield w
    finally:
        if w is not None:
            for r in w.replicas:
                r.stop()
            for proc in w.agents.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                    proc.wait(timeout=20)
            w.fleet.cleanup()
        if cluster is not None:
            cluster.close()
        sim.close()


@contextmanager
def under_load(w: World, per_host: int = 1) -> Iterator[None]:
    """hey at 320 req/s through the LB host for the block; then 0 failed requests and
    ``per_host`` containers on every app host (no duplicate)."""
    with HeyLoad(w.fleet.url, concurrency=8, qps=40, max_duration_s=300) as load:
        yield
        report = load.stop()
    print(report.summary())
    assert report.failed == 0 and report.non_2xx == 0, report.summary()
    for h in w.apps:
        assert len(w.containers(h)) == per_host, (h.name, w.revisions())


def test_switch_host_by_host_and_drift_repair_under_load(world: World) -> None:
    w = world
    with under_load(w):
        w.push("v2", "web v2")
        wait_for(lambda: w.converged("v2"), timeout=90,
                 what=f"v2 on every host\n{w.diagnostics()}")
        # one host a batch (rollout limit 1): each slice names the batch it was written in
        e, keys = w.etcd(), Keys(INSTANCE, w.fleet.env)
        try:
            batches = [decode_slice(keys.desired(h.name), e.get(keys.desired(h.name)).value).batch
                       for h in w.apps]  # type: ignore[union-attr]
        finally:
            e.close()
        assert batches == [0, 1, 2], batches
        h2 = w.apps[1]
        victim = w.containers(h2)[0]
        victim.remove(force=True)
        wait_for(lambda: [c.name for c in w.containers(h2) if c.status == "running"]
                 == [victim.name], timeout=30,
                 what=f"h2's agent to start {victim.name} again\n{w.agent_log(h2)}")
        wait_for(lambda: w.served() == {"revision=v2"}, timeout=30, what="v2 served")


def test_kill_9_of_the_leader_mid_rollout_the_standby_finishes_it(world: World) -> None:
    w = world
    with under_load(w):
        w.push("v3", "web v3")
        wait_for(lambda: w.revisions()[w.apps[0].name] == ["v3"], timeout=60,
                 what=f"h1 rolled to v3\n{w.diagnostics()}")
        leader = w.leader()
        assert leader is not None
        assert w.revisions()[w.apps[2].name] == ["v2"]  # mid-rollout: h3 not rolled yet
        leader.proc.kill()
        killed = time.monotonic()
        wait_for(lambda: (lead := w.leader()) is not None and lead is not leader, timeout=30,
                 what=f"the standby to lead\n{w.diagnostics()}")
        print(f"takeover after kill -9 of the leader: {time.monotonic() - killed:.2f}s")
        wait_for(lambda: w.converged("v3"), timeout=90,
                 what=f"the standby to finish the rollout\n{w.diagnostics()}")
    w.replicas.append(Replica(w.fleet, w.bare, "c"))  # a standby again


def test_an_agent_cut_off_fails_its_host_and_stops_the_rollout(world: World) -> None:
    w = world
    h1, h2, h3 = w.apps
    ports = ",".join(str(m.client_port) for m in w.cluster.members)
    cut = ["OUTPUT", "-d", w.sim.gateway, "-p", "tcp", "-m", "multiport", "--dports", ports,
           "-j", "DROP"]
    with under_load(w):
        w.sim.run(h2, "iptables", "-I", *cut)  # h2 (its agent) cannot reach etcd
        try:
            e = w.etcd()
            report_key = Keys(INSTANCE, w.fleet.env).app_report(h2.name)
            try:
                wait_for(lambda: e.get(report_key) is None, timeout=40,
                         what="h2's report to expire with its lease")
            finally:
                e.close()
            w.push("v2", "web v2 again")
            wait_for(lambda: any("host h2 failed" in s and "not rolled: h3" in s
                                 for r in w.replicas for s in r.summaries()), timeout=60,
                     what=f"a pass failing h2 and stopping the rollout\n{w.diagnostics()}")
            assert w.revisions() == {h1.name: ["v2"], h2.name: ["v3"], h3.name: ["v3"]}
            assert w.served() <= {"revision=v2", "revision=v3"}
            assert w.agents[h2.name].poll() is None  # it runs on, cut off
        finally:
            w.sim.run(h2, "iptables", "-D", *cut)
        wait_for(lambda: w.converged("v2"), timeout=90,
                 what=f"the rollout completed once h2 reports again\n{w.diagnostics()}")


def test_a_canary_judged_from_the_lb_agents_counters_is_promoted(world: World) -> None:
    w = world
    w.fleet.canary = {
        "steps": [{"weight": 50, "min_duration": "2s", "min_requests": 40},
                  {"weight": 100, "min_duration": "2s", "min_requests": 40}],
        "analysis": {"confidence": 0.99, "max_error_rate": 0.2, "interval": "1s"},
    }
    with under_load(w, per_host=2):
        w.fleet.revisions = [("v2", 100), ("v3", 0)]
        w.fleet.write("canary v3")
        git(w.fleet.repo, "push", "-q", "origin", "HEAD:main")
        wait_for(lambda: w.revisions() == {h.name: ["v2", "v3"] for h in w.apps}, timeout=90,
                 what=f"v3 beside v2 on every host\n{w.diagnostics()}")
        wait_for(lambda: "revision=v3" in w.served(), timeout=60,
                 what=f"the canary's first step\n{w.diagnostics()}")
        wait_for(lambda: any(r.canary_status() == "promoted" for r in w.replicas), timeout=90,
                 what=f"the canary promoted\n{w.diagnostics()}")
        wait_for(lambda: w.served() == {"revision=v3"}, timeout=30, what="v3 served alone")
        # the leader dies: the one that takes over goes on from the state in etcd, so
        # the promoted canary stays promoted (it does not start again at 50%)
        leader = w.leader()
        assert leader is not None
        leader.proc.kill()
        # from the kill until 5 s after the new leader's first pass, all traffic stays on
        # v3 (a new leader without the state would judge afresh, from 50%)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert w.served() == {"revision=v3"}, w.diagnostics()
            new = w.leader()
            if new is not None and new is not leader and new.runs():
                deadline = min(deadline, time.monotonic() + 5)
        assert new is not None and new is not leader and new.canary_status() == "promoted"
    assert w.revisions() == {h.name: ["v2", "v3"] for h in w.apps}
    w.replicas.append(Replica(w.fleet, w.bare, "d"))  # a standby again


def test_etcd_members_down_one_goes_on_two_tear_nothing_down(world: World) -> None:
    """One member of three down: the next rollout goes on. Two down (no quorum): a new
    commit changes nothing, nothing is torn down and traffic flows; with quorum back,
    the rollout goes on."""
    w = world
    w.fleet.canary = {}
    with under_load(w):
        w.cluster.kill(0)
        try:
            w.push("v1", "web v1, one etcd member down")
            wait_for(lambda: w.converged("v1"), timeout=90,
                     what=f"v1 everywhere with one member down\n{w.diagnostics()}")
            w.cluster.kill(1)
            names = w.names()
            w.push("v2", "web v2 without quorum")
            deadline = time.monotonic() + 3 * TTL + 5
            while time.monotonic() < deadline:  # a window in which nothing may change
                assert w.names() == names
                assert w.served() == {"revision=v1"}
                time.sleep(0.5)
        finally:
            w.cluster.revive()
        wait_for(lambda: w.converged("v2"), timeout=120,
                 what=f"the rollout with quorum back\n{w.diagnostics()}")


def test_a_leader_paused_past_its_lease_is_fenced_out_when_it_resumes(world: World) -> None:
    w = world
    with under_load(w):
        sha = w.push("v1", "web v1 again")
        wait_for(lambda: w.revisions()[w.apps[0].name] == ["v1"], timeout=60,
                 what=f"h1 rolled to v1\n{w.diagnostics()}")
        paused = w.leader()
        assert paused is not None and w.revisions()[w.apps[2].name] == ["v2"]
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: (lead := w.leader()) is not None and lead is not paused,
                     timeout=6 * TTL, what=f"the other replica to lead\n{w.diagnostics()}")
            wait_for(lambda: w.converged("v1"), timeout=90,
                     what=f"the new leader to finish the rollout\n{w.diagnostics()}")
            finished = w.names()
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        status = wait_for(lambda: [r for r in paused.runs(sha) if r[0] != "running"],
                          timeout=60, what=f"the resumed replica's pass to end\n{paused.log()}")
        assert status[-1][0] == "stopped" and "fenced out" in status[-1][1], status
        assert w.names() == finished
        assert w.served() == {"revision=v1"}
