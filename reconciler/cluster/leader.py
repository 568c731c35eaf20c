"""Leader election of reconciler replicas through etcd, and the fence of the leader.

Any number of replicas of one environment run an ``Elector``. Exactly one holds the
key ``Keys.leader``: it created it in a transaction that requires the key not to exist
(``create_revision == 0``), bound to its own lease, with its replica id as the value.
It renews the lease from a thread every third of the TTL, and in the same round
confirms that the key still holds its id and lease. The others stand by: they watch
the key and campaign again as soon as it is gone (the leader's lease expired or was
revoked), so a dead leader is replaced within the TTL plus a round trip.

The leader acts only while its ``Fence`` holds. The fence is local and cheap (no I/O
per check): it holds until ``sent + ttl - margin``, where ``sent`` is the local
monotonic time at which the last successful renew-and-confirm round was *sent* (the
lease cannot expire in etcd before ``sent + ttl``: etcd starts the TTL when it
receives the renewal), ``ttl`` the TTL etcd granted and ``margin`` a safety margin for
the step about to start. A leader paused past its TTL (SIGSTOP, a long GC, a VM
freeze) or cut off from etcd finds its fence expired by its own clock the moment it
runs again, before any round could renew it; a round that finds the lease gone or the
key not its own drops the fence at once. Writes to etcd are fenced in etcd itself
(``Elector.txn_if_leader``: the transaction compares the key's value and lease).

A leader that loses its fence stands by like any replica; if its lease and key
survived (etcd unreachable for less than the TTL, or no quorum: etcd extends leases
when a new etcd leader is elected), the next round that succeeds restores the fence,
as nobody else can have held the key meanwhile.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler.cluster.etcd import (
    Compare,
    Etcd,
    Op,
    TxnResult,
    created_never,
    lease_is,
    value_is,
)
from reconciler.cluster.keys import Keys
from reconciler.coordination import EtcdSettings
from reconciler.errors import ClusterError, FencedOut

log = logging.getLogger("reconciler.cluster")
Clock = Callable[[], float]


def replica_id() -> str:
    """``<hostname>-<pid>-<8 hex>``: unique per process start, readable by an operator."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def read_leader(settings: EtcdSettings, instance: str, environment: str) -> str | None:
    """The id of the replica leading ``environment`` now (None: none). Raises
    ClusterError when etcd cannot tell."""
    etcd = Etcd(settings)
    try:
        kv = etcd.get(Keys(instance, environment).leader)
    finally:
        etcd.close()
    return None if kv is None else kv.value.decode(errors="replace")


def margin_for(ttl_s: float) -> float:
    """The fence's safety margin for a TTL: a fifth of it, at least 0.5 s."""
    return max(0.5, ttl_s / 5)


class Fence:
    """Whether this replica may take its next step as the leader (see the module).

    ``check()`` raises ``FencedOut`` unless a renew-and-confirm round sent less than
    ``ttl - margin`` seconds ago (by ``clock``) succeeded and nothing dropped the
    fence since. Thread-safe: the renewing thread writes, the acting thread reads."""

    def __init__(self, margin_s: float, clock: Clock = time.monotonic) -> None:
        self.margin_s = margin_s
        self.clock = clock
        self._until = float("-inf")
        self._ttl = 0.0
        self._why = "not elected yet"
        self._epoch = 0
        self._lock = threading.Lock()

    def begin(self) -> tuple[float, int]:
        """Call before sending a round: (the send time, the fence's epoch) for ``renewed``."""
        with self._lock:
            return self.clock(), self._epoch

    def renewed(self, sent: tuple[float, int], ttl_s: float) -> None:
        """The round begun at ``sent`` renewed the lease to ``ttl_s`` and confirmed the
        key. Ignored when the fence was dropped since the round began (its news is old)."""
        sent_at, epoch = sent
        with self._lock:
            if epoch != self._epoch:
                return
            self._until = max(self._until, sent_at + ttl_s - self.margin_s)
            self._ttl = ttl_s

    def drop(self, why: str) -> None:
        """Leadership is lost for certain (lease gone, key not ours, stepping down)."""
        with self._lock:
            self._until = float("-inf")
            self._why = why
            self._epoch += 1

    def holds(self) -> bool:
        with self._lock:
            return self.clock() < self._until

    def check(self) -> None:
        """Raise ``FencedOut`` unless the fence holds (see the class)."""
        with self._lock:
            now, until, why = self.clock(), self._until, self._why
        if now < until:
            return
        if until == float("-inf"):
            raise FencedOut(f"not the leader: {why}")
        raise FencedOut(
            f"leadership not confirmed for {now - until + self._ttl - self.margin_s:.1f}s "
            f"(lease TTL {self._ttl:.0f}s, margin {self.margin_s:.1f}s): the lease may have "
            "expired"
        )


class LeaderGuard:
    """The guard of a leader's pass: called before every step (``Fence.check``), and a
    ``publish.Fence`` for its writes to etcd (``Elector.compares``)."""

    def __init__(self, elector: Elector) -> None:
        self.elector = elector

    def __call__(self) -> None:
        self.elector.fence.check()

    def compares(self) -> list[Compare]:
        return self.elector.compares()


@dataclass(frozen=True)
class Leadership:
    """What a replica knows of the election: whether it leads and who does."""

    leading: bool  # elected and the fence holds: may act
    leader: str | None  # the holder's replica id (None: nobody, or unknown)
    elected: bool = False  # holds the key as far as it knows (the fence may have lapsed)


class Elector:
    """Runs the election of one environment in a thread (``start``/``stop``).

    ``on_change`` is called (from that thread) whenever leadership is won or lost, or
    the known leader changes. ``status()`` is what the replica knows now; ``fence``
    guards its steps. ``stop()`` steps down: the lease is revoked, so a standby takes
    over at once instead of after the TTL."""

    def __init__(
        self,
        etcd: Etcd,
        keys: Keys,
        ttl_s: int,
        replica: str | None = None,
        on_change: Callable[[], None] = lambda: None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.etcd = etcd
        self.keys = keys
        self.ttl_s = ttl_s
        self.replica = replica or replica_id()
        self.on_change = on_change
        self.clock = clock
        self.fence = Fence(margin_for(ttl_s), clock)
        self.lease = 0
        self._leader: str | None = None
        self._leading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said = ""  # the last state logged (said once, not every round)

    # ------------------------------------------------------------ public

    def start(self) -> Elector:
        self._thread = threading.Thread(target=self._run, name="elector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and step down (revoke the lease: the key goes with it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s + 5)
        self.fence.drop("stopped")
        self._forget_lease()

    def status(self) -> Leadership:
        return Leadership(self._leading and self.fence.holds(), self._leader, self._leading)

    def compares(self) -> list[Compare]:
        """What fences a write of this replica (``publish.Fence``): the leader key holds
        its id and lease. Raises ``FencedOut`` when the local fence has lapsed already."""
        self.fence.check()
        return self._ours()

    def txn_if_leader(self, success: Sequence[Op]) -> TxnResult:
        """``success`` in one transaction that applies only while the leader key holds
        this replica's id and lease; raises ``FencedOut`` when it does not."""
        self.fence.check()
        done = self.etcd.txn(self._ours(), success)
        if not done.succeeded:
            self._lose("the leader key is no longer this replica's")
            raise FencedOut(f"not the leader of {self.keys.environment}: write refused by etcd")
        return done

    # ------------------------------------------------------------ the thread

    def _ours(self) -> list[Compare]:
        """The leader key holds this replica's id, bound to its lease."""
        return [value_is(self.keys.leader, self.replica.encode()),
                lease_is(self.keys.leader, self.lease)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._leading:
                    self._heartbeat()
                else:
                    self._stand_by()
            except ClusterError as exc:
                if not self._leading:
                    self.lease = 0  # a campaign's lease may be gone: grant a new one
                self._say(f"etcd: {exc}", logging.WARNING, event="etcd-error")
                self._stop.wait(min(1.0, self.ttl_s / 5))

    def _stand_by(self) -> None:
        """Campaign; if someone else leads, watch the key until it goes (or a while)."""
        found = self.etcd.range(self.keys.leader)
        if not found.kvs and self._campaign():
            return
        holder = found.kvs[0].value.decode(errors="replace") if found.kvs else None
        if holder is not None:
            self._set(leading=False, leader=holder)
            self._say(f"standby, leader is {holder}", event="standby", leader=holder)
        start = found.revision + 1
        for ev in self.etcd.watch(self.keys.leader, start_revision=start,
                                  idle_s=min(1.0, self.ttl_s / 3)):
            if ev.type == "delete" or self._stop.is_set():
                return

    def _campaign(self) -> bool:
        """Try to create the leader key bound to a fresh lease; True when won."""
        if not self.lease:
            self.lease = self.etcd.grant(self.ttl_s)
        sent = self.fence.begin()
        won = self.etcd.txn([created_never(self.keys.leader)],
                            [Op("put", self.keys.leader, self.replica.encode(), lease=self.lease)],
                            [Op("get", self.keys.leader)])
        if not won.succeeded:
            self._forget_lease()  # not kept alive while standing by: a new one next time
            return False
        self.fence.renewed(sent, self.ttl_s)
        self._set(leading=True, leader=self.replica)
        self._say(f"leader of {self.keys.environment} (replica {self.replica})",
                  event="leader", leader=self.replica)
        return True

    def _heartbeat(self) -> None:
        """One renew-and-confirm round, then wait a third of the TTL."""
        sent = self.fence.begin()
        try:
            ttl = self.etcd.keepalive(self.lease)
            if ttl <= 0:
                self._lose("the lease expired")
                return
            if not self.etcd.txn(self._ours(), []).succeeded:
                self._lose("the leader key is no longer this replica's")
                return
            self.fence.renewed(sent, ttl)
            self._said = "" if self._said.startswith("etcd:") else self._said
        finally:
            if self._leading:
                self._stop.wait(self.ttl_s / 3)

    def _lose(self, why: str) -> None:
        self.fence.drop(why)
        self._forget_lease()
        self._set(leading=False, leader=None)
        self._say(f"lost leadership of {self.keys.environment}: {why}; standing by",
                  logging.WARNING, event="lost-leadership", why=why)

    def _forget_lease(self) -> None:
        """Revoke the lease (the key, if still ours, goes with it) and forget it."""
        lease, self.lease = self.lease, 0
        try:
            if lease:
                self.etcd.revoke(lease)
        except ClusterError:
            pass  # gone already, or etcd unreachable: it expires by itself

    def _set(self, leading: bool, leader: str | None) -> None:
        changed = (leading, leader) != (self._leading, self._leader)
        self._leading, self._leader = leading, leader
        if changed:
            self.on_change()

    def _say(self, text: str, level: int = logging.INFO, **extra: object) -> None:
        if text != self._said:
            self._said = text
            log.log(level, "%s", text, extra={"environment": self.keys.environment, **extra})
