"""Container planning: which containers each app host starts, keeps and retires.

Pure, like the rest of the planner. It fills the container phases of ``Phases`` (pulls,
early removals, starts, removals), the servers HAProxy should have (``Phases.servers``)
and why each retired container's server goes (``Phases.retiring``); ``plan.lb`` turns the
last two into HAProxy actions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

from reconciler import identity
from reconciler.model import (
    DesiredState,
    Host,
    ObservedContainer,
    ObservedState,
    Release,
    Service,
)
from reconciler.plan.actions import PullImage, RemoveContainer, StartContainer
from reconciler.plan.phases import Phases, WantedServer
from reconciler.plan.reasons import describe_changes


def plan_containers(
    ph: Phases,
    desired: DesiredState,
    observed: ObservedState,
    held: Mapping[str, str],
    frozen: Collection[str],
) -> None:
    """Plan the containers of every app host that is not ``frozen``, and retire the
    environment's containers on observed hosts that are no app host any more.

    Services in ``held`` get nothing, anywhere: their containers stay as they run.
    """
    _retire_unused_hosts(ph, desired, observed, held, frozen)
    # A server HAProxy's own checks hold DOWN counts as an unhealthy container (an HTTP
    # health check has no Docker health status to say so).
    down = {s.server for lb in observed.lbs for s in lb.stats if s.status.startswith("DOWN")}
    for host in desired.hosts:
        if "app" not in host.roles or host.name in frozen:
            continue
        _plan_host(ph, desired, host, observed, held, down)


def _retire_unused_hosts(
    ph: Phases,
    desired: DesiredState,
    observed: ObservedState,
    held: Mapping[str, str],
    frozen: Collection[str],
) -> None:
    """Retire the environment's containers on observed hosts that are neither app hosts
    nor frozen (gone from the inventory, or left with the lb role only)."""
    env = desired.environment
    app_hosts = {h.name for h in desired.hosts if "app" in h.roles}
    for obs_host in observed.hosts:
        if obs_host.name in app_hosts or obs_host.name in frozen:
            continue
        why = f"host {obs_host.name} is no longer used by environment {env}"
        for c in sorted(obs_host.containers, key=lambda c: c.name):
            # a held service stays exactly as it runs, here too: its servers are left in
            # HAProxy (its backend gets no action), so its containers must stay as well
            if c.label(identity.ENVIRONMENT) == env and c.label(identity.SERVICE) not in held:
                retire(ph, obs_host.name, c.label(identity.SERVICE), c, why)


def _plan_host(
    ph: Phases,
    desired: DesiredState,
    host: Host,
    observed: ObservedState,
    held: Mapping[str, str],
    down: set[str],
) -> None:
    """Plan one app host: every service desired or observed on it, by name, except the
    held ones. A running container whose server is in ``down`` counts as unhealthy."""
    env = desired.environment
    wanted = {s.name: s for s in desired.services}
    containers = [
        replace(c, health="unhealthy")
        if identity.server_name(host.name, c.name) in down and c.status == "running"
        else c
        for c in observed.host(host.name).containers
        if c.label(identity.ENVIRONMENT) == env
    ]
    images = dict(observed.host(host.name).images)
    by_service: dict[str, list[ObservedContainer]] = defaultdict(list)
    for c in containers:
        by_service[c.label(identity.SERVICE)].append(c)
    for name in sorted(set(by_service) | set(wanted)):
        if name in held:
            continue
        svc = wanted.get(name)
        group = sorted(by_service.get(name, []), key=lambda c: c.name)
        if svc is None or host.name not in svc.hosts:
            why = (
                f"service {name} removed"
                if svc is None
                else f"service {name} no longer runs on host {host.name}"
            )
            for c in group:
                retire(ph, host.name, name, c, why)
            continue
        _plan_service(ph, desired, host, svc, group, images)


def _plan_service(
    ph: Phases,
    desired: DesiredState,
    host: Host,
    svc: Service,
    group: list[ObservedContainer],
    images: dict[str, str],
) -> None:
    """Plan ``svc`` on ``host``: pull each missing image once per host, plan every
    release's replicas, retire the rest of ``group`` (the service's observed containers on
    the host, sorted by name). ``images``: image reference -> id on the host."""
    keep: set[str] = set()
    pulled = {a.image for a in ph.pulls if isinstance(a, PullImage) and a.host == host.name}
    for rel in svc.releases:
        image_id = images.get(rel.spec.image, "")
        if not image_id and rel.spec.image not in pulled:
            pulled.add(rel.spec.image)
            ph.pulls.append(
                PullImage(
                    host=host.name,
                    service=svc.name,
                    image=rel.spec.image,
                    reason=f"image {rel.spec.image} is not on host {host.name}",
                )
            )
        keep |= _plan_release(ph, desired, host, svc, rel, group, image_id)
    _retire_rest(ph, desired, host.name, svc, group, images, keep)


def _plan_release(
    ph: Phases,
    desired: DesiredState,
    host: Host,
    svc: Service,
    rel: Release,
    group: list[ObservedContainer],
    image_id: str,
) -> set[str]:
    """Plan each replica of ``rel``: a container with its deterministic name that runs
    well is kept (its server wanted at its published port); otherwise one is started (a
    dead one of that name removed first). Returns the names planned here, which are not
    retired. ``image_id`` is empty while the image is not on the host."""
    env = desired.environment
    key = desired.instance.label_key
    by_name = {c.name: c for c in group}
    chash = identity.config_hash(env, svc.name, rel.revision, rel.spec, image_id, key)
    planned: set[str] = set()
    for replica in range(svc.replicas):
        name = identity.container_name(
            env, svc.name, rel.revision, chash, replica, desired.instance.name
        )
        planned.add(name)
        existing = by_name.get(name)
        server = _wanted_server(host, svc, rel, name)
        if existing is not None and _is_good(existing):
            port = existing.published[1] if existing.published else None
            ph.servers.append(replace(server, port=port, reason="server missing"))
            continue
        if existing is not None:
            ph.early_removals.append(_replace_dead(host.name, svc.name, rel, existing))
            reason = _status_reason(existing)
        else:
            reason = _start_reason(rel, replica, group, svc, image_id, key)
        ph.starts.append(
            StartContainer(
                host=host.name,
                service=svc.name,
                reason=reason,
                name=name,
                revision=rel.revision,
                replica=replica,
                image_id=image_id,
                config_hash=chash,
                spec=rel.spec,
            )
        )
        ph.servers.append(server)
    return planned


def _wanted_server(host: Host, svc: Service, rel: Release, name: str) -> WantedServer:
    """The server of a container ``name`` of ``rel`` on ``host``, as if newly started."""
    return WantedServer(
        identity.backend_name(svc.name),
        identity.server_name(host.name, name),
        name,
        svc.name,
        host.name,
        host.address,
        None,
        rel.weight,
        "new container",
    )


def _replace_dead(
    host: str, service: str, rel: Release, existing: ObservedContainer
) -> RemoveContainer:
    """Remove ``existing`` (not running well) early: a new container needs its name."""
    return RemoveContainer(
        host=host,
        service=service,
        name=existing.name,
        container_id=existing.id,
        grace_s=rel.spec.stop_grace_s,
        reason=_status_reason(existing) + "; replaced by a new container",
    )


def _retire_rest(
    ph: Phases,
    desired: DesiredState,
    host: str,
    svc: Service,
    group: list[ObservedContainer],
    images: dict[str, str],
    keep: set[str],
) -> None:
    """Retire every container of ``group`` not in ``keep``, saying why it goes."""
    releases = {r.revision: r for r in svc.releases}
    env = desired.environment
    key = desired.instance.label_key
    for c in group:
        if c.name in keep:
            continue
        rev = c.label(identity.REVISION)
        found = releases.get(rev)
        if not _is_good(c):
            why = _status_reason(c)
        elif found is None:
            why = f"release {rev} removed"
        elif _replica(c) >= svc.replicas and _same_hash(c, env, svc, found, images, key):
            why = f"replicas {svc.replicas}: replica {_replica(c)} no longer needed"
        else:
            changes = _changes(c, found, images, key)
            why = "replaced: " + ("; ".join(changes) if changes else "configuration changed")
        retire(ph, host, svc.name, c, why)


def retire(ph: Phases, host: str, service: str, c: ObservedContainer, why: str) -> None:
    """Stop and remove ``c`` in the last phase (with the grace period it was started
    with), and record why its server leaves HAProxy."""
    grace = _old_spec(c).get("stop_grace_s", 10)
    ph.retiring[identity.server_name(host, c.name)] = why
    ph.removals.append(
        RemoveContainer(
            host=host,
            service=service,
            name=c.name,
            container_id=c.id,
            reason=why,
            grace_s=grace if isinstance(grace, int) else 10,
        )
    )


def _is_good(c: ObservedContainer) -> bool:
    return c.status == "running" and c.health != "unhealthy"


def _status_reason(c: ObservedContainer) -> str:
    if c.status == "running":
        return f"container {c.name} is unhealthy"
    return f"container {c.name} is {c.status}"


def _replica(c: ObservedContainer) -> int:
    try:
        return int(c.label(identity.REPLICA, "0"))
    except ValueError:
        return 0


def _same_hash(
    c: ObservedContainer,
    env: str,
    svc: Service,
    rel: Release,
    images: dict[str, str],
    key: str,
) -> bool:
    chash = identity.config_hash(
        env, svc.name, rel.revision, rel.spec, images.get(rel.spec.image, ""), key
    )
    return c.label(identity.CONFIG_HASH) == chash


def _old_spec(c: ObservedContainer) -> dict[str, Any]:
    try:
        spec = json.loads(c.label(identity.SPEC, "{}"))
    except ValueError:
        return {}
    return spec if isinstance(spec, dict) else {}


def _changes(c: ObservedContainer, rel: Release, images: dict[str, str], key: str) -> list[str]:
    new = identity.label_spec(rel.spec, images.get(rel.spec.image, ""), key)
    old = _old_spec(c)
    if not new["image_id"]:
        new["image_id"] = old.get("image_id", "")  # unknown until pulled: do not claim a move
    return describe_changes(old, new)


def _start_reason(
    rel: Release,
    replica: int,
    group: list[ObservedContainer],
    svc: Service,
    image_id: str,
    key: str,
) -> str:
    """Why a container of ``rel`` (replica ``replica``) is started, from what ``group``
    (the service's observed containers on the host) has."""
    if not group:
        reason = f"release {rel.revision} at weight {rel.weight}"
        reason = ("first deploy: " + reason) if len(svc.releases) == 1 else reason
    elif all(c.label(identity.REVISION) != rel.revision for c in group):
        reason = f"new release {rel.revision} at weight {rel.weight}"
    else:
        same_replica = [
            c
            for c in group
            if c.label(identity.REVISION) == rel.revision and _replica(c) == replica
        ]
        if same_replica:
            changes = describe_changes(
                _old_spec(same_replica[0]),
                identity.label_spec(
                    rel.spec, image_id or _old_spec(same_replica[0]).get("image_id", ""), key
                ),
            )
            reason = "; ".join(changes) if changes else "configuration changed"
        else:
            reason = f"replicas -> {svc.replicas}: replica {replica} added"
    if not image_id:
        reason += " (name provisional until the image is pulled)"
    return reason
