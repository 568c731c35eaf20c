"""What the replicas of an environment share besides the election: the services held at
the commit the leader applied last (key ``held``, ``reconciler.cluster.keys``).

Each replica keeps its own history (its state dir). A service whose apply failed is held
at that commit (left as it runs until a newer commit or ``reconcile retry``); without
sharing that, a replica that takes over would try the failed release again at the same
commit. So, in etcd mode:

- after each pass, the leader writes ``held`` = ``{"commit", "services": {service: why}}``
  (the services its history holds at the pass's commit; the reasons are the history's,
  secrets already blanked) in a transaction fenced by its leadership, and only when it
  changed;
- before a pass at a commit its own history has not applied yet (a takeover), a
  replica adopts the services ``held`` names at that same commit into its history.

A replica that has applied the commit itself goes by its own history: ``reconcile
retry`` where the leader runs clears the hold, and the leader's next pass shares that.
etcd unreachable: the pass goes on with the replica's own history (a warning); the
next pass shares again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from reconciler.cluster.etcd import Etcd, Op
from reconciler.cluster.keys import Keys
from reconciler.cluster.publish import Fence, NoFence
from reconciler.errors import ClusterError, FencedOut
from reconciler.model import DesiredState
from reconciler.store import Store

log = logging.getLogger("reconciler.cluster")
FORMAT = "reconciler/held"


@dataclass(frozen=True)
class Held:
    """The services held at ``commit`` (service -> why)."""

    commit: str
    services: Mapping[str, str]

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "version": 1, "commit": self.commit,
                           "services": dict(sorted(self.services.items()))},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Held | None:
        """The value of ``held``; None when it is not one (written by another version)."""
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or not isinstance(doc.get("commit"), str):
                return None
            services = {str(k): str(v) for k, v in dict(doc.get("services", {})).items()}
        except (ValueError, TypeError, AttributeError):
            return None
        return cls(doc["commit"], services)


class SharedHolds:
    """The ``held`` key of one environment, read and written through ``client``."""

    def __init__(self, client: Etcd, keys: Keys, fence: Fence) -> None:
        self.client = client
        self.keys = keys
        self.fence = fence

    def read(self) -> Held | None:
        kv = self.client.get(self.keys.held)
        return None if kv is None else Held.decode(kv.value)

    def adopt(self, store: Store, environment: str, commit: str) -> list[str]:
        """Before a pass at ``commit``: when this replica's history has not applied it,
        record the services ``held`` names at it as failed there; those adopted. Never
        raises: etcd unreachable leaves the history as it is (a warning)."""
        if store.last_commit(environment) == commit:
            return []
        try:
            shared = self.read()
        except ClusterError as exc:
            log.warning("etcd: cannot read the services held by the leader before: %s", exc,
                        extra={"environment": environment, "event": "etcd-error"})
            return []
        if shared is None or shared.commit != commit:
            return []
        mine = store.failed_services(environment, commit)
        adopted = sorted(set(shared.services) - set(mine))
        for service in adopted:
            store.record_failure(environment, commit, service, shared.services[service])
        if adopted:
            log.info("services held at %s by the leader before: %s (reconcile retry to try "
                     "again)", commit[:7], ", ".join(adopted),
                     extra={"environment": environment, "event": "held-adopted",
                            "services": adopted})
        return adopted

    def share(self, store: Store, environment: str, commit: str) -> None:
        """After a pass at ``commit``: make ``held`` say what this replica's history
        holds at it, fenced (nothing written when unchanged). Never raises: a replica
        that lost the lead writes nothing; etcd unreachable is a warning."""
        want = Held(commit, store.failed_services(environment, commit))
        try:
            have = self.read()
            if have == want or (have is None and not want.services):
                return
            compares = list(self.fence.compares())
            if not self.client.txn(compares, [Op("put", self.keys.held, want.encode())]
                                   ).succeeded:
                raise FencedOut("not the leader any more")
        except ClusterError as exc:  # FencedOut too
            log.warning("etcd: the services held at %s not shared: %s", commit[:7], exc,
                        extra={"environment": environment, "event": "etcd-error"})


def holds_for(desired: DesiredState, guard: Callable[[], None]) -> SharedHolds:
    """The ``held`` key of ``desired``'s environment (etcd mode), written under
    ``guard``'s fence (the leader's: ``reconciler.cluster.leader.LeaderGuard``)."""
    settings = desired.coordination.etcd
    assert settings is not None, "etcd mode only"
    return SharedHolds(Etcd(settings, timeout_s=min(2.0, settings.lease_ttl / 4)),
                       Keys(desired.instance.name, desired.environment),
                       guard if isinstance(guard, Fence) else NoFence())
