"""The etcd client (reconciler.cluster.etcd) against a real 3-member TLS cluster
(tests/etcd_support.py): kv, transactions, leases, watches, failover, and the errors
when members, quorum or TLS are missing; the election (reconciler.cluster.leader) of two
electors in one process: one leads, only its writes pass, stepping down hands over."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import wait_for
from etcd_support import EtcdCluster

from reconciler.cluster.etcd import Etcd, Event, KeyValue, Op, created_never, lease_is
from reconciler.cluster.keys import Keys
from reconciler.cluster.leader import Elector
from reconciler.cluster.once import leadership
from reconciler.coordination import Coordination, EtcdSettings
from reconciler.errors import ClusterError, EtcdUnavailable, FencedOut


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    c = EtcdCluster.start(tmp_path_factory.mktemp("etcd"))
    yield c
    c.close()
    assert not any(m.running() for m in c.members)


def settings(c: EtcdCluster, ca: Path | None = None) -> EtcdSettings:
    return EtcdSettings(tuple(c.endpoints), str(ca or c.pki.ca), str(c.pki.client_cert),
                        str(c.pki.client_key))


def test_kv_txn_lease_and_watch(cluster: EtcdCluster) -> None:
    e = Etcd(settings(cluster))
    lease = e.grant(5)
    assert e.keepalive(lease) == 5
    won = e.txn([created_never("/t/leader")], [Op("put", "/t/leader", b"a", lease=lease)])
    assert won.succeeded
    lost = e.txn([created_never("/t/leader")], [Op("put", "/t/leader", b"b")])
    assert not lost.succeeded
    kv = e.get("/t/leader")
    assert kv is not None and kv.value == b"a" and kv.lease == lease
    assert e.txn([lease_is("/t/leader", lease)], []).succeeded
    assert not e.txn([lease_is("/t/leader", lease + 1)], []).succeeded

    seen: list[Event] = []
    start = e.range("/t/", prefix=True).revision + 1
    e.put("/t/x", b"1")
    e.revoke(lease)  # deletes the leader key with it
    for ev in e.watch("/t/", prefix=True, start_revision=start, idle_s=0.5):
        seen.append(ev)
    assert [(ev.type, ev.kv.key) for ev in seen] == [("put", "/t/x"), ("delete", "/t/leader")]
    assert e.get("/t/leader") is None
    assert e.keepalive(lease) == 0  # gone
    with pytest.raises(ClusterError, match="lease not found"):
        e.put("/t/y", b"1", lease=lease)


def test_a_dead_member_fails_over_and_a_watch_on_it_breaks_loudly(cluster: EtcdCluster) -> None:
    e = Etcd(settings(cluster))
    e.put("/f/k", b"v")
    outcome: list[object] = []

    def follow() -> None:
        try:
            outcome.extend(e.watch("/f/", prefix=True, idle_s=30))
        except EtcdUnavailable as exc:
            outcome.append(exc)

    t = threading.Thread(target=follow)
    t.start()
    try:
        time.sleep(0.5)  # let the watch reach member 0 (the first endpoint)
        cluster.kill(0)
        t.join(timeout=20)
        assert not t.is_alive(), "the watch on a killed member did not end"
        assert isinstance(outcome[-1], EtcdUnavailable), outcome
        assert cluster.endpoints[0] in str(outcome[-1])
        # the next endpoint answers, once the members left have elected a leader (if the
        # killed one led, a read meanwhile is refused: "leader changed", timed out)
        kv = wait_for(lambda: _read(e, "/f/k"), timeout=15, what="a read after failover")
        assert kv.value == b"v"
        cluster.kill(1)  # two of three down: no quorum
        with pytest.raises(EtcdUnavailable) as exc:
            e.get("/f/k")
        for ep in cluster.endpoints:
            assert ep in str(exc.value)
        # a transaction of compares alone is a read too: etcd would answer it from the
        # member's own state, without quorum, unless the client makes it linearizable
        with pytest.raises(EtcdUnavailable):
            e.txn([created_never("/f/none")], [])
    finally:
        cluster.revive()
    kv = e.get("/f/k")
    assert kv is not None and kv.value == b"v"


def _read(e: Etcd, key: str) -> KeyValue | None:
    try:
        return e.get(key)
    except EtcdUnavailable:
        return None


def test_a_server_certificate_from_another_ca_is_refused(cluster: EtcdCluster) -> None:
    e = Etcd(settings(cluster, ca=cluster.pki.other_ca))
    with pytest.raises(EtcdUnavailable, match="TLS: the server's certificate is not signed"):
        e.get("/x")


def test_one_of_two_electors_leads_and_only_its_writes_pass(cluster: EtcdCluster) -> None:
    keys = Keys("inst", "env1")
    a = Elector(Etcd(settings(cluster)), keys, 3, replica="a").start()
    b: Elector | None = None
    try:
        wait_for(lambda: a.status().leading, timeout=10, what="a leads")
        b = Elector(Etcd(settings(cluster)), keys, 3, replica="b").start()
        wait_for(lambda: b.status().leader == "a", timeout=10, what="b sees a lead")
        assert not b.status().leading
        a.txn_if_leader([Op("put", keys.pool("web"), b"from a")])
        with pytest.raises(FencedOut, match="not the leader"):
            b.txn_if_leader([Op("put", keys.pool("web"), b"from b")])
        # one command's pass (reconcile apply) waits for the leader, then gives up
        coord = Coordination("etcd", settings(cluster))
        with pytest.raises(ClusterError, match="replica a leads environment 'env1'"), \
                leadership(coord, "inst", "env1", timeout_s=1):
            pass
        # the key taken from a (by hand here): etcd refuses a's write, whatever a's fence says
        e = Etcd(settings(cluster))
        e.delete(keys.leader)
        with pytest.raises(FencedOut):
            a.txn_if_leader([Op("put", keys.pool("web"), b"late write of a")])
        wait_for(lambda: b.status().leading, timeout=10, what="b takes over")
        kv = e.get(keys.pool("web"))
        assert kv is not None and kv.value == b"from a"
        # stepping down revokes the lease: the other leads at once, not after the TTL
        b.stop()
        wait_for(lambda: a.status().leading, timeout=10, what="a leads again")
    finally:
        a.stop()
        if b is not None:
            b.stop()
    assert Etcd(settings(cluster)).get(keys.leader) is None
