"""The leader's side of the app hosts in etcd mode: each host's desired slice
(``reconciler.cluster.hostslice``) from a plan. Pure.

A slice holds every container the host should run with its full spec: those the plan
starts there (with the labels the executor gives them, so names, labels and hashes are
the same in both modes) and those that run and stay (the observed ones whose labels
match a release of the desired state: an agent restarts them if they die). A container
that runs but matches no desired release (a retired release still draining) is in
``keep``: the agent leaves it alone. The containers the plan removes are left out only
with ``removals`` (the leader removes them after their servers left the pools).
"""

from __future__ import annotations

from reconciler import identity
from reconciler.cluster.hostslice import HostSlice, SliceContainer
from reconciler.model import DesiredState, ObservedContainer, ObservedState
from reconciler.plan.actions import PullImage, RemoveContainer, StartContainer
from reconciler.plan.planner import Plan


def started(desired: DesiredState, a: StartContainer) -> SliceContainer:
    """The slice entry of a container the plan starts."""
    assert a.spec is not None and a.service is not None
    labels = identity.container_labels(
        desired.environment, a.service, a.revision, a.config_hash, a.replica, desired.commit,
        a.spec, a.image_id, desired.instance.name, desired.instance.label_key)
    return SliceContainer(a.name, a.service, a.revision, a.image_id,
                          tuple(sorted(labels.items())), a.spec)


def running(desired: DesiredState, c: ObservedContainer) -> SliceContainer | None:
    """The slice entry of a container that runs, when its labels match a desired
    release (same config hash); None otherwise."""
    service, revision = c.label(identity.SERVICE), c.label(identity.REVISION)
    for svc in desired.services:
        for rel in svc.releases if svc.name == service else ():
            chash = identity.config_hash(desired.environment, service, rel.revision, rel.spec,
                                         c.image_id, desired.instance.label_key)
            if rel.revision == revision and chash == c.label(identity.CONFIG_HASH):
                return SliceContainer(c.name, service, revision, c.image_id, c.labels, rel.spec)
    return None


def host_slices(desired: DesiredState, observed: ObservedState, plan: Plan, *,
                removals: bool) -> dict[str, HostSlice]:
    """App host -> its slice after ``plan`` (see the module), for every app host of
    ``desired`` and every observed host (a retired host's slice keeps nothing)."""
    names = sorted(desired.app_host_names | {h.name for h in observed.hosts})
    out = {}
    for host in names:
        acts = [a for a in plan.actions if a.host == host]
        gone = {a.name for a in acts if isinstance(a, RemoveContainer)}
        containers = [started(desired, a) for a in acts if isinstance(a, StartContainer)]
        keep = []
        for c in observed.host(host).containers:
            if removals and c.name in gone:
                continue
            entry = running(desired, c)
            if entry is not None and c.name not in gone:
                containers.append(entry)
            else:
                keep.append(c.name)
        address = desired.host(host).address if host in desired.app_host_names else "127.0.0.1"
        pulls = tuple(sorted({a.image for a in acts if isinstance(a, PullImage)}))
        unique = {c.name: c for c in containers}
        out[host] = HostSlice(host, desired.environment, desired.instance.name, desired.commit,
                              address, tuple(sorted(unique.values(), key=lambda c: c.name)),
                              tuple(sorted(set(keep) - set(unique))), pulls)
    return out
