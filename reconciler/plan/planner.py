"""The planner: desired x observed -> Plan. A pure function: no I/O, no clock, no globals.

Order of a plan (each phase over all hosts, sorted, so one HAProxy reload adds every new
server and one removes every retired one):

1. pull missing images;
2. remove dead containers whose deterministic name a new container needs;
3. start new containers (each waits for its health gate);
4. add the new servers to HAProxy (one reload per LB host, only when structure changed;
   every LB host's new servers first, then their configs, so the executor can verify
   each LB host's config before it switches any); point servers whose container was
   replaced (or moved) at its published address through the runtime API; then set
   weights through the runtime API (no reload) and write addresses and weights into the
   config;
5. drain retired servers and remove them through the runtime API (no reload);
6. stop and remove retired containers.

A change to anything that defines a container gives a new container (new config hash,
new name) next to the old one; nothing is updated in place.

Rollouts across hosts come from calling ``plan`` once per batch with the app hosts of
later batches ``frozen``: their containers and their servers in HAProxy are left exactly
as they are. An observed app host that is not in the desired state (removed from the
inventory or from every service) has all of the environment's containers retired.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler import identity
from reconciler.lb.haproxy.sections import section_digests
from reconciler.model import (
    DesiredState,
    LoadBalancer,
    ObservedContainer,
    ObservedHAProxy,
    ObservedState,
    Release,
    Service,
)
from reconciler.plan.actions import (
    Action,
    AddServer,
    ConfigureHAProxy,
    DrainServer,
    PullImage,
    RemoveContainer,
    RemoveServer,
    RepointServer,
    SetWeight,
    StartContainer,
)
from reconciler.plan.reasons import describe_changes


@dataclass(frozen=True)
class Plan:
    environment: str
    commit: str
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions


@dataclass(frozen=True)
class _Server:
    """A server HAProxy should have after the add phase."""

    backend: str
    name: str  # HAProxy server name
    container: str
    service: str
    app_host: str
    address: str
    port: int | None  # None: container not started yet
    weight: int
    reason: str


@dataclass
class _Phases:
    pulls: list[Action] = field(default_factory=list)
    early_removals: list[Action] = field(default_factory=list)
    starts: list[Action] = field(default_factory=list)
    lb_adds: list[Action] = field(default_factory=list)
    repoints: list[Action] = field(default_factory=list)
    lb_configs: list[Action] = field(default_factory=list)
    weights: list[Action] = field(default_factory=list)
    drains: list[Action] = field(default_factory=list)
    lb_removals: list[Action] = field(default_factory=list)
    removals: list[Action] = field(default_factory=list)
    servers: list[_Server] = field(default_factory=list)
    # HAProxy server name of each container that stops serving -> why
    retiring: dict[str, str] = field(default_factory=dict)


def plan(
    desired: DesiredState,
    observed: ObservedState,
    held: Mapping[str, str] | None = None,
    frozen: Collection[str] = (),
) -> Plan:
    """The ordered actions that take ``observed`` to ``desired``. Same inputs, same plan.

    ``held``: services left exactly as they run (service -> why), e.g. because their
    apply already failed at this commit; they get no action, only a note.
    ``frozen``: app hosts left exactly as they run (containers and HAProxy servers).
    """
    ph = _Phases()
    env = desired.environment
    held = held or {}
    wanted = {s.name: s for s in desired.services}
    # A server HAProxy's own checks hold DOWN counts as an unhealthy container (an HTTP
    # health check has no Docker health status to say so).
    down = {s.server for lb in observed.haproxy for s in lb.stats if s.status.startswith("DOWN")}
    # A host that is no app host any more (gone from the inventory, or left with the
    # lb role only) keeps none of the environment's containers.
    app_hosts = {h.name for h in desired.hosts if "app" in h.roles}
    for obs_host in observed.hosts:
        if obs_host.name in app_hosts or obs_host.name in frozen:
            continue
        why = f"host {obs_host.name} is no longer used by environment {env}"
        for c in sorted(obs_host.containers, key=lambda c: c.name):
            # a held service stays exactly as it runs, here too: its servers are left in
            # HAProxy (its backend gets no action), so its containers must stay as well
            if c.label(identity.ENVIRONMENT) == env and c.label(identity.SERVICE) not in held:
                _retire(ph, obs_host.name, c.label(identity.SERVICE), c, why, None)
    for host in desired.hosts:
        if "app" not in host.roles or host.name in frozen:
            continue
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
                    _retire(ph, host.name, name, c, why, svc)
                continue
            _plan_service(ph, desired, host.name, host.address, svc, group, images)
    held_backends = {identity.backend_name(name) for name in held}
    for lb in desired.loadbalancers:
        for lb_host in lb.hosts:
            _plan_lb(ph, desired, lb, observed.lb(lb_host), held_backends, set(frozen))
    notes = tuple(f"service {name} held: {why}" for name, why in sorted(held.items()))
    actions = (
        ph.pulls
        + ph.early_removals
        + ph.starts
        + ph.lb_adds
        + ph.repoints
        + ph.lb_configs
        + ph.weights
        + ph.drains
        + ph.lb_removals
        + ph.removals
    )
    return Plan(environment=env, commit=desired.commit, actions=tuple(actions), notes=notes)


# --------------------------------------------------------------------------- containers


def _is_good(c: ObservedContainer) -> bool:
    return c.status == "running" and c.health != "unhealthy"


def _status_reason(c: ObservedContainer) -> str:
    if c.status == "running":
        return f"container {c.name} is unhealthy"
    return f"container {c.name} is {c.status}"


def _plan_service(
    ph: _Phases,
    desired: DesiredState,
    host: str,
    address: str,
    svc: Service,
    group: list[ObservedContainer],
    images: dict[str, str],
) -> None:
    env = desired.environment
    key = desired.instance.label_key
    by_name = {c.name: c for c in group}
    observed_revisions = {c.label(identity.REVISION) for c in group}
    keep: set[str] = set()
    pulled: set[str] = {a.image for a in ph.pulls if isinstance(a, PullImage) and a.host == host}
    for rel in svc.releases:
        image_id = images.get(rel.spec.image, "")
        if not image_id and rel.spec.image not in pulled:
            pulled.add(rel.spec.image)
            ph.pulls.append(
                PullImage(
                    host=host,
                    service=svc.name,
                    image=rel.spec.image,
                    reason=f"image {rel.spec.image} is not on host {host}",
                )
            )
        chash = identity.config_hash(env, svc.name, rel.revision, rel.spec, image_id, key)
        for replica in range(svc.replicas):
            name = identity.container_name(
                env, svc.name, rel.revision, chash, replica, desired.instance.name
            )
            existing = by_name.get(name)
            server = _Server(
                identity.backend_name(svc.name),
                identity.server_name(host, name),
                name,
                svc.name,
                host,
                address,
                None,
                rel.weight,
                "new container",
            )
            if existing is not None and _is_good(existing):
                keep.add(name)
                port = existing.published[1] if existing.published else None
                ph.servers.append(replace(server, port=port, reason="server missing"))
                continue
            if existing is not None:
                keep.add(name)  # handled here, not retired below
                ph.early_removals.append(
                    RemoveContainer(
                        host=host,
                        service=svc.name,
                        name=name,
                        container_id=existing.id,
                        grace_s=rel.spec.stop_grace_s,
                        reason=_status_reason(existing) + "; replaced by a new container",
                    )
                )
                reason = _status_reason(existing)
            else:
                reason = _start_reason(
                    rel, replica, group, observed_revisions, svc, image_id, key
                )
            ph.starts.append(
                StartContainer(
                    host=host,
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
    desired_revisions = {r.revision: r for r in svc.releases}
    for c in group:
        if c.name in keep:
            continue
        rev = c.label(identity.REVISION)
        found = desired_revisions.get(rev)
        if not _is_good(c):
            why = _status_reason(c)
        elif found is None:
            why = f"release {rev} removed"
        elif _replica(c) >= svc.replicas and _same_hash(c, env, svc, found, images, key):
            why = f"replicas {svc.replicas}: replica {_replica(c)} no longer needed"
        else:
            changes = _changes(c, found, images, key)
            why = "replaced: " + ("; ".join(changes) if changes else "configuration changed")
        _retire(ph, host, svc.name, c, why, svc)


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


def _changes(
    c: ObservedContainer, rel: Release, images: dict[str, str], key: str
) -> list[str]:
    new = identity.label_spec(rel.spec, images.get(rel.spec.image, ""), key)
    old = _old_spec(c)
    if not new["image_id"]:
        new["image_id"] = old.get("image_id", "")  # unknown until pulled: do not claim a move
    return describe_changes(old, new)


def _start_reason(
    rel: Release,
    replica: int,
    group: list[ObservedContainer],
    observed_revisions: set[str],
    svc: Service,
    image_id: str,
    key: str,
) -> str:
    if not group:
        reason = f"release {rel.revision} at weight {rel.weight}"
        reason = ("first deploy: " + reason) if len(svc.releases) == 1 else reason
    elif rel.revision not in observed_revisions:
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


def _retire(
    ph: _Phases, host: str, service: str, c: ObservedContainer, why: str, svc: Service | None
) -> None:
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


# --------------------------------------------------------------------------- HAProxy


def _frozen_server(server: str, frozen: set[str]) -> bool:
    return identity.server_host(server) in frozen


def _plan_lb(
    ph: _Phases,
    desired: DesiredState,
    lb: LoadBalancer,
    obs: ObservedHAProxy,
    held: set[str],
    frozen: set[str],
) -> None:
    lb_host = obs.host
    structure: list[str] = []
    if not obs.running:
        structure.append("HAProxy is not running")
    else:
        structure += _section_changes(dict(obs.config_sections), dict(section_digests(desired, lb)))
    live = {
        (s.backend, s.server): s
        for s in obs.servers
        if s.backend not in held and not _frozen_server(s.server, frozen)
    }
    wanted = {(s.backend, s.name): s for s in ph.servers}
    drain_timeout = {identity.backend_name(s.name): s.drain_timeout_s for s in desired.services}
    for key in sorted(wanted):
        srv = wanted[key]
        have = live.get(key)
        if have is None:
            ph.lb_adds.append(
                AddServer(
                    host=lb_host,
                    service=srv.service,
                    backend=srv.backend,
                    server=srv.name,
                    app_host=srv.app_host,
                    container=srv.container,
                    weight=srv.weight,
                    reason=srv.reason,
                )
            )
            continue
        if srv.port is None or (have.address, have.port) != (srv.address, srv.port):
            ph.repoints.append(
                RepointServer(
                    host=lb_host,
                    service=srv.service,
                    backend=srv.backend,
                    server=srv.name,
                    app_host=srv.app_host,
                    container=srv.container,
                    reason=(
                        f"its container is new; HAProxy has it at {have.address}:{have.port}"
                        if srv.port is None
                        else f"its container publishes {srv.address}:{srv.port}, "
                        f"not {have.address}:{have.port}"
                    ),
                )
            )
        if have.weight != srv.weight or have.admin:
            state = f" (state {','.join(have.admin)})" if have.admin else ""
            ph.weights.append(
                SetWeight(
                    host=lb_host,
                    service=srv.service,
                    backend=srv.backend,
                    server=srv.name,
                    old_weight=have.weight,
                    weight=srv.weight,
                    reason=f"weight of its release is {srv.weight}{state}",
                )
            )
    if ph_adds := [a for a in ph.lb_adds if a.host == lb_host]:
        structure.append(f"{len(ph_adds)} server(s) added")
    if structure:
        ph.lb_configs.append(
            ConfigureHAProxy(
                host=lb_host,
                service=None,
                reload=True,
                reasons=tuple(structure),
                reason="structure changed",
            )
        )
    runtime_changes = [a for a in (*ph.repoints, *ph.weights) if a.host == lb_host]
    if runtime_changes:
        ph.weights.append(
            ConfigureHAProxy(
                host=lb_host,
                service=None,
                reload=False,
                reasons=("keep the new addresses and weights across reloads",),
                reason="servers changed at runtime",
            )
        )
    removed = [key for key in sorted(live) if key not in wanted]
    if obs.running and not structure and not removed and not runtime_changes:
        # The runtime is right; is the file (read at the next reload) right too? A pass
        # killed between a runtime change and the file write leaves it behind.
        expected = tuple(
            sorted(
                (s.backend, s.name, s.address, s.port, s.weight)
                for s in wanted.values()
                if s.port is not None
            )
        )
        in_file = tuple(
            x for x in obs.config_servers if x[0] not in held and not _frozen_server(x[1], frozen)
        )
        if in_file != expected:
            ph.weights.append(
                ConfigureHAProxy(
                    host=lb_host,
                    service=None,
                    reload=False,
                    reasons=("the config file's servers differ from HAProxy's",),
                    reason="config file out of date",
                )
            )
    for backend, server in removed:
        service = identity.parse_backend_name(backend)
        why = ph.retiring.get(server, "no such container")
        ph.drains.append(
            DrainServer(
                host=lb_host,
                service=service,
                backend=backend,
                server=server,
                timeout_s=drain_timeout.get(backend, 30),
                reason=why,
            )
        )
        ph.lb_removals.append(
            RemoveServer(host=lb_host, service=service, backend=backend, server=server, reason=why)
        )
    if removed:
        # Servers leave through the runtime API (maint, then del server): the file is
        # written to match, with no reload.
        ph.lb_removals.append(
            ConfigureHAProxy(
                host=lb_host,
                service=None,
                reload=False,
                reasons=(f"{len(removed)} server(s) removed",),
                reason="servers removed",
            )
        )


def _section_changes(have: dict[str, str], want: dict[str, str]) -> list[str]:
    if not have:
        return ["no managed config installed"]
    out: list[str] = []
    for name in sorted(set(have) | set(want)):
        if name not in have:
            out.append(f"{name} added")
        elif name not in want:
            out.append(f"{name} removed")
        elif have[name] != want[name]:
            out.append(f"{name} changed")
    return out


def count_by_kind(actions: Iterable[Action]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for a in actions:
        counts[a.kind] += 1
    return dict(sorted(counts.items()))
