"""Leadership for one command (`reconcile apply` by hand): in etcd mode, a one-shot
pass must be the leader like a `watch` replica, or it would act beside one."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from reconciler.errors import ClusterError

if TYPE_CHECKING:
    from reconciler.coordination import Coordination


def _no_guard() -> None:
    """ssh mode: the per-environment lock alone keeps passes apart."""


@contextlib.contextmanager
def leadership(
    coord: Coordination, instance: str, environment: str, timeout_s: float
) -> Iterator[Callable[[], None]]:
    """The guard of a pass: in ssh mode one that never raises; in etcd mode this
    process joins the election and waits up to ``timeout_s`` to lead, then yields its
    fence's check, and steps down on exit (the lease is revoked: a waiting replica takes
    over at once). Raises ClusterError naming the replica that kept leading, or why
    etcd could not be asked."""
    if coord.mode != "etcd" or coord.etcd is None:
        yield _no_guard
        return
    # Imported here: ssh mode (every one-shot command by default) loads no etcd client.
    from reconciler.cluster.etcd import Etcd
    from reconciler.cluster.keys import Keys
    from reconciler.cluster.leader import Elector, LeaderGuard

    settings = coord.etcd
    etcd = Etcd(settings, timeout_s=min(2.0, settings.lease_ttl / 4))
    elector = Elector(etcd, Keys(instance, environment), settings.lease_ttl).start()
    try:
        deadline = time.monotonic() + timeout_s
        while not (status := elector.status()).leading:
            if time.monotonic() > deadline:
                who = f"replica {status.leader}" if status.leader else "another replica"
                raise ClusterError(
                    f"{who} leads environment {environment!r} (etcd mode): only the leader "
                    f"acts; waited {timeout_s:.0f}s (stop the replicas or wait for them)"
                )
            time.sleep(0.05)
        yield LeaderGuard(elector)
    finally:
        elector.stop()
        etcd.close()
