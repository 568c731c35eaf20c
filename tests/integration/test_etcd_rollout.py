"""The leader's rollout in etcd mode (``reconciler.agent.drive``) against a real 3-member
TLS etcd cluster, with scripted agents: three app hosts and one LB host whose agents
are threads that apply each slice at once (every container in it "runs, healthy", on a
port of its own) and report it, and an LB agent that reports every pools revision.
What is under test is the leader's order of writes, not Docker or HAProxy (the agents'
own tests, test_etcd_agents.py and test_etcd_lb_agent.py, run them for real).

- ``rollout.limit: 1``: a release switch moves host by host: a host's slice names the
  new release only after the previous host's old container is gone from its slice,
  and meanwhile the pools hold the old release's servers of the hosts not rolled yet.
- A host whose agent is silent (its report gone with its lease) is a failed batch:
  with ``on_failure: stop`` the hosts after it are not rolled (the pass says which);
  with ``continue`` they are. The silent host's slice is never written and its
  servers stay in the pools.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
from deploy_support import wait_for
from etcd_support import EtcdCluster
from support import desired, service

from reconciler import identity
from reconciler.agent.drive import SILENT, EtcdDrive
from reconciler.cluster.etcd import Etcd
from reconciler.cluster.hostslice import (
    AppReport,
    ReportedContainer,
    decode_slice,
    encode_app_report,
)
from reconciler.cluster.keys import Keys
from reconciler.cluster.lbconfig import LBReport, encode_report
from reconciler.cluster.publish import NoFence, app_reports, published_pools
from reconciler.coordination import EtcdSettings
from reconciler.errors import ClusterError
from reconciler.model import DesiredState, Instance, Rollout

pytestmark = pytest.mark.integration

APPS = ("a1", "a2", "a3")
LB = "lb1"
INSTANCE = "rollt"
IMAGES = (("app:v1", "sha256:" + "1" * 64), ("app:v2", "sha256:" + "2" * 64))


@dataclass
class ScriptedApp:
    """An app agent that applies each slice at once and reports it under its lease."""

    client: Etcd
    keys: Keys
    host: str
    port: int
    running: dict[str, ReportedContainer] = field(default_factory=dict)
    revision: int = 0
    lease: int = 0
    silent: bool = False
    # (monotonic time, revisions it runs) after each slice it applied
    seen: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)

    def step(self) -> None:
        if self.silent:
            return
        kv = self.client.get(self.keys.desired(self.host))
        if kv is not None and kv.mod_revision > self.revision:
            sl = decode_slice(kv.key, kv.value)
            wanted = {c.name for c in sl.containers} | set(sl.keep)
            self.running = {n: c for n, c in self.running.items() if n in wanted}
            for c in sl.containers:
                if c.name not in self.running:
                    self.port += 1
                    self.running[c.name] = ReportedContainer(
                        c.name, "running", "healthy", c.image_id, c.labels, "127.0.0.1",
                        self.port)
            self.revision = kv.mod_revision
            self.seen.append((time.monotonic(), self.revisions()))
        if not self.lease:
            self.lease = self.client.grant(3)
        self.client.keepalive(self.lease)
        report = AppReport(self.host, self.revision, "", tuple(self.running.values()),
                           time.time(), images=IMAGES)
        self.client.put(self.keys.app_report(self.host), encode_app_report(report), self.lease)

    def revisions(self) -> tuple[str, ...]:
        return tuple(sorted(dict(c.labels)[identity.REVISION] for c in self.running.values()))

    def go_silent(self) -> None:
        """Stop reporting; the report goes with the lease (as when it expires)."""
        self.silent = True  # first: a step running now may still put once (then fails)
        self.client.revoke(self.lease)


@dataclass
class Fleet:
    client: Etcd
    keys: Keys
    apps: dict[str, ScriptedApp]
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for app in self.apps.values():
                try:
                    app.step()
                except ClusterError:
                    app.lease = 0  # revoked under it (go_silent): a new one next time
            revision = self.client.range(self.keys.pools, prefix=True).revision
            self.client.put(self.keys.report(LB),
                            encode_report(LBReport(LB, revision, "", 0, time.time())))
            time.sleep(0.05)

    def desired(self, revision: str, commit: str, rollout: Rollout) -> DesiredState:
        d = desired(service("web", [(revision, 100)], replicas=1, hosts=APPS), hosts=APPS,
                    lb_hosts=(LB,), env=self.keys.environment, commit=commit)
        return replace(d, rollout=rollout,
                       hosts=tuple(replace(h, address="127.0.0.1") for h in d.hosts),
                       instance=Instance(INSTANCE, adopt_unlabelled=False, label_key="k"))

    def drive(self) -> EtcdDrive:
        return EtcdDrive(self.client, self.keys, NoFence(), health_timeout_s=10, poll_s=0.05)

    def pool(self) -> list[tuple[str, str, int]]:
        """(app host, revision, weight) of web's published servers."""
        return sorted((s.app_host, s.revision, s.weight)
                      for s in published_pools(self.client, self.keys)["be_web"].servers)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    c = EtcdCluster.start(tmp_path_factory.mktemp("etcdroll"))
    yield c
    c.close()


@pytest.fixture
def fleet(cluster: EtcdCluster) -> Iterator[Fleet]:
    settings = EtcdSettings(tuple(cluster.endpoints), str(cluster.pki.ca),
                            str(cluster.pki.client_cert), str(cluster.pki.client_key))
    client = Etcd(settings)
    keys = Keys(INSTANCE, f"r{uuid.uuid4().hex[:6]}")
    f = Fleet(client, keys, {h: ScriptedApp(client, keys, h, 20000 + 1000 * i)
                             for i, h in enumerate(APPS)})
    thread = threading.Thread(target=f.run, daemon=True)
    thread.start()
    wait_for(lambda: set(app_reports(client, keys)) == set(APPS), timeout=10,
             what="the scripted agents' first reports")
    done = f.drive().run(f.desired("v1", "c1", Rollout()))
    assert not done.failures and not done.hosts, done
    assert f.pool() == [(h, "v1", 100) for h in APPS]
    yield f
    f.stop.set()
    thread.join(5)
    client.close()


def test_one_host_at_a_time(fleet: Fleet) -> None:
    f = fleet
    pools: list[list[tuple[str, str, int]]] = []

    def watch_pools() -> None:
        while not f.stop.is_set() and len(pools) < 100:
            now = f.pool()
            if not pools or pools[-1] != now:
                pools.append(now)
            time.sleep(0.02)

    threading.Thread(target=watch_pools, daemon=True).start()
    done = f.drive().run(f.desired("v2", "c2", Rollout(limit=1)))
    assert not done.failures and not done.hosts and not done.notes, done
    assert f.pool() == [(h, "v2", 100) for h in APPS]
    # each host got v2 only once the host before it ran v2 alone
    first_v2 = {h: min(t for t, revs in a.seen if "v2" in revs) for h, a in f.apps.items()}
    v2_alone = {h: min(t for t, revs in a.seen if revs == ("v2",)) for h, a in f.apps.items()}
    assert v2_alone["a1"] < first_v2["a2"] and v2_alone["a2"] < first_v2["a3"], f.apps
    # the pools moved host by host: the hosts not rolled yet kept v1's servers
    assert [("a1", "v2", 100), ("a2", "v1", 100), ("a3", "v1", 100)] in pools, pools
    assert [("a1", "v2", 100), ("a2", "v2", 100), ("a3", "v1", 100)] in pools, pools


@pytest.mark.parametrize("on_failure", ["stop", "continue"])
def test_a_silent_host_fails_its_batch_by_the_rollout_policy(fleet: Fleet, on_failure: str) -> None:
    f = fleet
    f.apps["a2"].go_silent()
    wait_for(lambda: "a2" not in app_reports(f.client, f.keys), timeout=5,
             what="a2's report gone")
    slice_a2 = f.client.get(f.keys.desired("a2"))
    assert slice_a2 is not None
    rollout = Rollout(limit=1, on_failure=on_failure)  # type: ignore[arg-type]
    done = f.drive().run(f.desired("v2", "c2", rollout))
    assert done.hosts == {"a2": SILENT} and not done.failures, done
    after = f.client.get(f.keys.desired("a2"))
    assert after is not None and after.mod_revision == slice_a2.mod_revision
    assert f.apps["a2"].revisions() == ("v1",)
    if on_failure == "stop":
        assert done.notes == ["rollout stopped after batch 2/3 (a2) failed; not rolled: a3"]
        assert f.pool() == [("a1", "v2", 100), ("a2", "v1", 100), ("a3", "v1", 100)]
        assert f.apps["a3"].revisions() == ("v1",)
    else:
        assert not done.notes, done.notes
        assert f.pool() == [("a1", "v2", 100), ("a2", "v1", 100), ("a3", "v2", 100)]
        assert f.apps["a3"].revisions() == ("v2",)
