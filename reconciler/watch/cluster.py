"""`reconcile watch` in etcd mode: the replica's part in the election of the
environment it follows (``reconciler.cluster.leader``).

Every replica follows the branch and loads each commit as in ssh mode (reading git
changes nothing); the Inventory of the commit says the mode. In etcd mode the watcher
runs an ``Elector`` for (endpoints and TLS files, instance, environment) and passes
only while it leads: a standby does no pass at all (the elector logs "standby, leader
is X" once), and the leader's passes run with its fence as the executor's guard. When
a standby wins the election, the watcher is woken and runs a pass at once, whatever
the drift interval says. A pass that the fence stopped, or a ``FencedOut`` raised
before its plan, puts the replica back to standing by; the elector logs why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from reconciler.apply.passresult import PassResult
from reconciler.cluster.etcd import Etcd
from reconciler.cluster.keys import Keys
from reconciler.cluster.leader import Elector, LeaderGuard
from reconciler.coordination import EtcdSettings
from reconciler.errors import FencedOut
from reconciler.model import DesiredState

log = logging.getLogger("reconciler.watch")
Guard = Callable[[], None]


def no_guard() -> None:
    """ssh mode: the per-environment lock alone keeps passes apart."""


class ClusterRole:
    """The election a watcher takes part in (none in ssh mode). ``wake`` is called when
    leadership changes, so the loop looks at once."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self._elector: Elector | None = None
        self._ident: tuple[EtcdSettings, str, str] | None = None
        self._standby = False

    def guard(self, desired: DesiredState, kind: str) -> Guard | None:
        """The guard of a pass of ``desired`` (``no_guard`` in ssh mode), or None when
        this replica stands by (a new commit, ``kind`` "commit", is then logged as not
        applied here). Raises ClusterError when etcd settings cannot work (a TLS file
        missing): a transient error of the loop."""
        coord = desired.coordination
        if coord.mode != "etcd" or coord.etcd is None:
            self.stop()
            self._standby = False
            return no_guard
        elector = self._follow(coord.etcd, desired.instance.name, desired.environment)
        status = elector.status()
        if not status.leading:
            if status.elected and not self._standby:  # said once; the elector says the rest
                log.warning("leadership of %s not confirmed by etcd in time: no pass until "
                            "it is", desired.environment, extra={"event": "unconfirmed"})
            self._standby = True
            if kind == "commit":
                who = "leadership unconfirmed" if status.elected else f"leader is {status.leader}"
                log.info("commit %s not applied by this replica (%s)", desired.commit[:7], who,
                         extra={"event": "not-leading", "commit": desired.commit})
            return None
        if self._standby:
            log.info("leading %s: running a pass", desired.environment,
                     extra={"event": "takeover", "replica": elector.replica})
        self._standby = False
        return LeaderGuard(elector)

    def leading_now(self) -> float:
        """1.0 while this watcher may act: always in ssh mode (no election), in etcd
        mode while its elector leads with the fence holding; else 0.0."""
        if self._elector is None:
            return 1.0
        return 1.0 if self._elector.status().leading else 0.0

    def took_over(self) -> bool:
        """True when this standby has just become the leader (a pass is due now)."""
        return self._standby and self._elector is not None and self._elector.status().leading

    def fenced(self, done: PassResult) -> bool:
        """True (and standing by) when the fence stopped ``done``."""
        if done.result.fenced is None:
            return False
        self.fenced_out(FencedOut(done.result.fenced))
        return True

    def fenced_out(self, exc: FencedOut) -> None:
        log.warning("pass stopped, no further step: %s; standing by", exc,
                    extra={"event": "fenced", "why": str(exc)})
        self._standby = True

    def stop(self) -> None:
        """Leave the election (stepping down at once if leading)."""
        elector, self._elector, self._ident = self._elector, None, None
        if elector is not None:
            elector.stop()
            elector.etcd.close()

    def _follow(self, settings: EtcdSettings, instance: str, environment: str) -> Elector:
        ident = (settings, instance, environment)
        if self._elector is None or ident != self._ident:
            self.stop()
            etcd = Etcd(settings, timeout_s=min(2.0, settings.lease_ttl / 4))
            keys = Keys(instance, environment)
            self._elector = Elector(etcd, keys, settings.lease_ttl, on_change=self.wake).start()
            self._ident = ident
        return self._elector
