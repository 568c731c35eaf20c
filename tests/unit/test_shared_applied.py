"""The last applied commit and the services held at it, shared between etcd-mode
replicas (reconciler.cluster.shared), on a real history store and a stand-in for the
etcd client: what a replica adopts before a pass, what the leader writes after one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from reconciler.cluster.etcd import Compare, KeyValue, Op, TxnResult
from reconciler.cluster.keys import Keys
from reconciler.cluster.publish import NoFence
from reconciler.cluster.shared import Applied, SharedApplied
from reconciler.errors import EtcdUnavailable
from reconciler.store import Store

KEYS = Keys("inst", "prod")


class Kv:
    """A key-value stand-in of ``Etcd``: ``get`` and ``txn`` of puts (``ok``: whether
    the transaction's compares hold); ``down``: every request raises."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.txns = 0
        self.ok = True
        self.down = False

    def get(self, key: str) -> KeyValue | None:
        if self.down:
            raise EtcdUnavailable("etcd unavailable for get: no quorum")
        v = self.data.get(key)
        return None if v is None else KeyValue(key, v, 1, 1, 1, 0)

    def txn(self, compare: Sequence[Compare], success: Sequence[Op]) -> TxnResult:
        self.txns += 1
        if self.ok:
            self.data.update({o.key: o.value for o in success})
        return TxnResult(self.ok, 2)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "history.sqlite")


def shared(kv: Kv) -> SharedApplied:
    return SharedApplied(kv, KEYS, NoFence())  # type: ignore[arg-type]


def applied(store: Store, commit: str) -> None:
    run = store.start_run("prod", commit, "{}")
    store.finish_run(run, "ok", {}, "")


def test_the_leader_shares_its_holds_and_a_replica_new_to_the_commit_adopts_them(
        store: Store, tmp_path: Path) -> None:
    kv = Kv()
    leader = Store(tmp_path / "leader.sqlite")
    applied(leader, "c2")
    leader.record_failure("prod", "c2", "web", "container web-1 is not healthy\nlog...")
    shared(kv).share(leader, "prod", "c2")
    assert Applied.decode(kv.data[KEYS.applied]) == Applied("c2", {"web": "container web-1 is not healthy"})
    shared(kv).share(leader, "prod", "c2")
    assert kv.txns == 1  # unchanged: not written again

    applied(store, "c1")  # this replica applied an older commit only
    assert shared(kv).adopt(store, "prod", "c2") == ["web"]
    assert store.failed_services("prod", "c2") == {"web": "container web-1 is not healthy"}
    assert shared(kv).adopt(store, "prod", "c3") == []  # held at another commit: not adopted


def test_a_replica_that_applied_the_commit_goes_by_its_own_history(store: Store) -> None:
    kv = Kv()
    kv.data[KEYS.applied] = Applied("c2", {"web": "not healthy"}).encode()
    applied(store, "c2")  # e.g. `reconcile retry` cleared web here: it is tried again
    assert shared(kv).adopt(store, "prod", "c2") == []
    assert store.failed_services("prod", "c2") == {}
    shared(kv).share(store, "prod", "c2")  # and the hold is lifted for the others
    assert Applied.decode(kv.data[KEYS.applied]) == Applied("c2", {})


def test_etcd_down_or_the_lead_lost_changes_nothing_and_raises_nothing(store: Store) -> None:
    kv = Kv()
    kv.down = True
    assert shared(kv).adopt(store, "prod", "c2") == []
    store.record_failure("prod", "c2", "web", "not healthy")
    shared(kv).share(store, "prod", "c2")
    kv.down, kv.ok = False, False  # the fence no longer holds: nothing written
    shared(kv).share(store, "prod", "c2")
    assert kv.data == {} and kv.txns == 1


@pytest.mark.parametrize("raw", [b"", b"[]", b"{}", b'{"format": "other", "commit": "c"}',
                                 b'{"format": "reconciler/applied", "commit": 3}',
                                 b'{"format": "reconciler/applied", "commit": "c", "held": 1}'])
def test_a_value_that_is_not_a_hold_is_ignored(raw: bytes) -> None:
    assert Applied.decode(raw) is None
