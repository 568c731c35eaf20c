"""What the replicas of an environment share besides the election: the commit the
leader applied last and the services held at it (key ``applied``,
``reconciler.cluster.keys``).

Each replica keeps its own history (its state dir), and two things in it decide what a
pass may do: the services held at a commit (their apply failed: left as they run until
a newer commit or ``reconcile retry``) and the last commit applied (a commit that does
not descend from it is refused as a rollback). A replica that takes over must know the
leader's, or it would try a failed release again at the same commit, or apply a commit
older than what the leader applied. So, in etcd mode:

- after each pass, the leader writes ``applied`` = ``{"commit", "held": {service:
  why}}`` (the pass's commit and the services its history holds at it; the reasons are
  the history's, secrets already blanked) in a transaction fenced by its leadership,
  only when it changed;
- before a pass at a commit its own history has not applied yet (a takeover), a
  replica adopts the services held at that same commit into its history;
- the rollback guard compares a new commit with the shared commit (``last_applied``).

A replica that has applied the commit itself goes by its own history: ``reconcile
retry`` where the leader runs clears the hold, and the leader's next pass shares that.
etcd unreachable: the replica's own history decides (a warning); the next pass shares.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.cluster.etcd import Etcd, Op
from reconciler.cluster.keys import Keys
from reconciler.errors import ClusterError, FencedOut

if TYPE_CHECKING:  # the rollback guard of every command imports this module: keep it light
    from reconciler.cluster.publish import Fence
    from reconciler.model import DesiredState
    from reconciler.store import Store

log = logging.getLogger("reconciler.cluster")
FORMAT = "reconciler/applied"


@dataclass(frozen=True)
class Applied:
    """The commit the leader applied last and the services held at it (service -> why)."""

    commit: str
    held: Mapping[str, str]

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "version": 1, "commit": self.commit,
                           "held": dict(sorted(self.held.items()))}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Applied | None:
        """The value of ``applied``; None when it is not one (written by another version)."""
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or not isinstance(doc.get("commit"), str):
                return None
            held = {str(k): str(v) for k, v in dict(doc.get("held", {})).items()}
        except (ValueError, TypeError, AttributeError):
            return None
        return cls(doc["commit"], held)


class SharedApplied:
    """The ``applied`` key of one environment, read and written through ``client``."""

    def __init__(self, client: Etcd, keys: Keys, fence: Fence) -> None:
        self.client = client
        self.keys = keys
        self.fence = fence

    def read(self) -> Applied | None:
        kv = self.client.get(self.keys.applied)
        return None if kv is None else Applied.decode(kv.value)

    def held_at(self, environment: str, commit: str, local_last: str | None) -> dict[str, str]:
        """The services the leader holds at ``commit`` when the history at hand has not
        applied it (its last commit is ``local_last``); else {}. A history that applied
        the commit goes by itself, so ``reconcile retry`` there is not undone. Never
        raises: etcd unreachable is {} (a warning)."""
        if local_last == commit:
            return {}
        try:
            shared = self.read()
        except ClusterError as exc:
            _warn(environment, f"the services the leader holds are unknown: {exc}")
            return {}
        return dict(shared.held) if shared is not None and shared.commit == commit else {}

    def adopt(self, store: Store, environment: str, commit: str) -> list[str]:
        """Before a pass at ``commit``: record the services ``held_at`` it as failed
        there in this replica's history; those adopted."""
        held = self.held_at(environment, commit, store.last_commit(environment))
        adopted = sorted(set(held) - set(store.failed_services(environment, commit)))
        for service in adopted:
            store.record_failure(environment, commit, service, held[service])
        if adopted:
            log.info("services held at %s by the leader before: %s (reconcile retry to try "
                     "again)", commit[:7], ", ".join(adopted),
                     extra={"environment": environment, "event": "held-adopted",
                            "services": adopted})
        return adopted

    def share(self, store: Store, environment: str, commit: str) -> None:
        """After a pass at ``commit``: make ``applied`` say it with the services this
        replica's history holds at it, fenced (nothing written when unchanged). Never
        raises: a replica that lost the lead writes nothing; etcd unreachable is a
        warning."""
        want = Applied(commit, store.failed_services(environment, commit))
        try:
            if self.read() == want:
                return
            op = Op("put", self.keys.applied, want.encode())
            if not self.client.txn(list(self.fence.compares()), [op]).succeeded:
                raise FencedOut("not the leader any more")
        except ClusterError as exc:  # FencedOut too
            _warn(environment, f"commit {commit[:7]} and its held services not shared: {exc}")


def _warn(environment: str, text: str) -> None:
    log.warning("etcd: %s", text, extra={"environment": environment, "event": "etcd-error"})


def shared_for(desired: DesiredState, guard: Callable[[], None]) -> SharedApplied:
    """The ``applied`` key of ``desired``'s environment (etcd mode), written under
    ``guard``'s fence (the leader's: ``reconciler.cluster.leader.LeaderGuard``)."""
    from reconciler.cluster.publish import Fence, NoFence

    settings = desired.coordination.etcd
    assert settings is not None, "etcd mode only"
    return SharedApplied(Etcd(settings, timeout_s=min(2.0, settings.lease_ttl / 4)),
                         Keys(desired.instance.name, desired.environment),
                         guard if isinstance(guard, Fence) else NoFence())


def read_applied(desired: DesiredState) -> Applied | None:
    """What ``applied`` of ``desired``'s environment says now (etcd mode). Raises
    ClusterError when etcd cannot tell."""
    shared = shared_for(desired, lambda: None)
    try:
        return shared.read()
    finally:
        shared.client.close()


def held_elsewhere(desired: DesiredState, local_last: str | None) -> dict[str, str]:
    """etcd mode: ``SharedApplied.held_at`` ``desired``'s commit (what a preview leaves
    as it runs, as a pass would adopt it)."""
    if desired.coordination.etcd is None or local_last == desired.commit:
        return {}  # no client made: the watch loop's previews mostly end here
    shared = shared_for(desired, lambda: None)
    try:
        return shared.held_at(desired.environment, desired.commit, local_last)
    finally:
        shared.client.close()


def last_applied(desired: DesiredState, local: str | None) -> str | None:
    """The last commit applied to ``desired``'s environment, for the rollback guard: in
    etcd mode the leader's (``applied``) when etcd says one, else ``local`` (this
    replica's history: ssh mode, or etcd unreachable, with a warning)."""
    if desired.coordination.etcd is None or desired.coordination.mode != "etcd":
        return local
    try:
        found = read_applied(desired)
    except ClusterError as exc:
        _warn(desired.environment, f"the last applied commit is this replica's: {exc}")
        return local
    return local if found is None else found.commit
