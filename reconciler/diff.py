"""What changes between the desired states of two commits (``reconcile diff``).

Pure: compares two ``DesiredState`` values of the same environment, contacts no host.
Env values of secret-looking keys are masked; secrets are names only, so no value can leak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from reconciler.identity import MASK, is_secretish, shown_env_value
from reconciler.model import DesiredState, LoadBalancer, Release, Service

Status = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class ItemDiff:
    kind: Literal["service", "loadbalancer"]
    name: str
    status: Status
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvironmentDiff:
    environment: str
    items: tuple[ItemDiff, ...] = field(default=())


def diff_states(base: DesiredState, head: DesiredState) -> EnvironmentDiff:
    items: list[ItemDiff] = []
    items += _diff_named(
        "service",
        {s.name: s for s in base.services},
        {s.name: s for s in head.services},
        _service_changes,
        _service_summary,
    )
    items += _diff_named(
        "loadbalancer",
        {lb.name: lb for lb in base.loadbalancers},
        {lb.name: lb for lb in head.loadbalancers},
        _lb_changes,
        _lb_summary,
    )
    return EnvironmentDiff(environment=head.environment, items=tuple(items))


def _diff_named(
    kind: Any, old: dict[str, Any], new: dict[str, Any], changes: Any, summary: Any
) -> list[ItemDiff]:
    out = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append(ItemDiff(kind, name, "added", tuple(summary(new[name]))))
        elif name not in new:
            out.append(ItemDiff(kind, name, "removed", ()))
        elif found := changes(old[name], new[name]):
            out.append(ItemDiff(kind, name, "changed", tuple(found)))
    return out


def _weights(svc: Service) -> str:
    return ", ".join(f"{r.revision} {r.weight}%" for r in svc.releases)


def _service_summary(svc: Service) -> list[str]:
    spec = svc.releases[0].spec
    lines = [
        f"releases: {_weights(svc)}",
        f"replicas: {svc.replicas} per host",
        f"hosts: {', '.join(svc.hosts)}",
    ]
    lines += [f"env {k}={shown_env_value(k, v)}" for k, v in spec.env]
    lines += [f"secret {s.name} (value from {s.source} on the host)" for s in spec.secrets]
    return lines


def _service_changes(old: Service, new: Service) -> list[str]:
    out: list[str] = []
    old_rel = {r.revision: r for r in old.releases}
    new_rel = {r.revision: r for r in new.releases}
    for rev in sorted(set(old_rel) | set(new_rel)):
        if rev not in old_rel:
            out.append(f"release {rev} added at weight {new_rel[rev].weight}%")
        elif rev not in new_rel:
            out.append(f"release {rev} removed (was {old_rel[rev].weight}%)")
        elif old_rel[rev].weight != new_rel[rev].weight:
            out.append(f"weight of {rev}: {old_rel[rev].weight}% -> {new_rel[rev].weight}%")
    if old.replicas != new.replicas:
        out.append(f"replicas: {old.replicas} -> {new.replicas} per host")
    if old.hosts != new.hosts:
        added = sorted(set(new.hosts) - set(old.hosts))
        removed = sorted(set(old.hosts) - set(new.hosts))
        out += [f"host {h} added" for h in added] + [f"host {h} removed" for h in removed]
    # Spec changes are shown once, for a release present on both sides (else the newest).
    pair = _comparable_releases(old, new)
    if pair:
        out += _spec_changes(*pair)
    for fld in ("balance", "timeouts", "drain_timeout_s"):
        if getattr(old, fld) != getattr(new, fld):
            out += _deep(asdict(old)[fld], asdict(new)[fld], fld)
    return out


def _comparable_releases(old: Service, new: Service) -> tuple[Release, Release] | None:
    common = [r.revision for r in new.releases if r.revision in {o.revision for o in old.releases}]
    if common:
        rev = common[0]
        return (
            next(r for r in old.releases if r.revision == rev),
            next(r for r in new.releases if r.revision == rev),
        )
    return (old.releases[-1], new.releases[-1]) if old.releases and new.releases else None


def _spec_changes(old: Release, new: Release) -> list[str]:
    out: list[str] = []
    o, n = dict(old.spec.env), dict(new.spec.env)
    for key in sorted(set(o) | set(n)):
        if key not in o:
            out.append(f"env {key} added: {shown_env_value(key, n[key])}")
        elif key not in n:
            out.append(f"env {key} removed")
        elif o[key] != n[key]:
            out.append(
                f"env {key}: {shown_env_value(key, o[key])} -> {shown_env_value(key, n[key])}"
            )
    os_, ns = {s.name: s for s in old.spec.secrets}, {s.name: s for s in new.spec.secrets}
    for key in sorted(set(os_) | set(ns)):
        if key not in os_:
            out.append(f"secret {key} added (value from {ns[key].source} on the host)")
        elif key not in ns:
            out.append(f"secret {key} removed")
        elif os_[key] != ns[key]:
            out.append(f"secret {key}: source or version changed (value {MASK})")
    od, nd = asdict(old.spec), asdict(new.spec)
    if old.revision == new.revision and od["image"] != nd["image"]:
        out.append(f"image: {od['image']} -> {nd['image']}")
    for key in ("env", "secrets", "image"):
        od.pop(key)
        nd.pop(key)
    out += _deep(od, nd, "")
    return out


def _deep(old: Any, new: Any, prefix: str) -> list[str]:
    """Leaf differences of two plain structures, as "path: old -> new" (DeepDiff)."""
    from deepdiff import DeepDiff  # only the diff command needs it

    out = []
    tree = DeepDiff(old, new, view="tree", ignore_order=False)
    for levels in tree.values():
        for level in levels:
            parts = [str(p) for p in level.path(output_format="list")]
            path = ".".join(p for p in [prefix, *parts] if p)
            if any(is_secretish(p) for p in parts):
                out.append(f"{path} changed")
            else:
                out.append(f"{path}: {_show(level.t1)} -> {_show(level.t2)}")
    return sorted(out)


def _show(value: Any) -> str:
    if type(value).__name__ == "NotPresent":
        return "(none)"
    return "(none)" if value is None else str(value)


def _lb_summary(lb: LoadBalancer) -> list[str]:
    return [f"hosts: {', '.join(lb.hosts)}"] + [
        f"frontend {fe.name} on {fe.bind_address}:{fe.bind_port}" for fe in lb.frontends
    ]


def _lb_changes(old: LoadBalancer, new: LoadBalancer) -> list[str]:
    out: list[str] = []
    if old.hosts != new.hosts:
        out.append(f"hosts: {', '.join(old.hosts)} -> {', '.join(new.hosts)}")
    of, nf = {f.name: f for f in old.frontends}, {f.name: f for f in new.frontends}
    for name in sorted(set(of) | set(nf)):
        if name not in of:
            out.append(f"frontend {name} added on {nf[name].bind_address}:{nf[name].bind_port}")
        elif name not in nf:
            out.append(f"frontend {name} removed")
        elif of[name] != nf[name]:
            out += _deep(asdict(of[name]), asdict(nf[name]), f"frontend {name}")
    return out
