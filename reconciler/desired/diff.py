"""What changes between the desired states of two commits (``reconcile diff``).

Pure: compares two ``DesiredState`` values of the same environment, contacts no host.

Contract: the diff is empty exactly when the two states are equal apart from ``commit``
(and ``environment``, the same on both sides). To keep that true as the model grows, the
states are walked generically over their dataclass fields (``reconciler.changes``, the
walk the planner's reasons use too): a new field is compared (and shown) without any
change here; this module renders the changes as lines, and its tables only make some
lines read better.

- Named collections (elements with a ``name`` or ``revision``, canary steps by weight)
  are matched by that key; other sequences of records (volumes, routes) by position.
- ``Pairs`` (env, labels, log options) are compared key by key. Values of secret-looking
  keys are masked (``shown_env_value``), as is any field whose name looks secret; secret
  references are names and locations on the hosts, never values.
- Each line reads ``scope: path old -> new`` (``release v2: image a:v2 -> a:v3``), or
  ``path: old -> new`` outside any named element (``rollout.limit: all -> 1``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from reconciler.changes import (
    ABSENT,
    Change,
    Field,
    Item,
    Key,
    Member,
    Step,
    by_key,
    changes,
    is_pair,
    is_record,
    key_field,
)
from reconciler.identity import MASK, is_secretish, shown_env_value
from reconciler.model import CanaryStep, DesiredState, Release

Status = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class ItemDiff:
    """One named thing of an environment (``kind`` service, loadbalancer, host, or the
    environment itself for its own settings) and human lines of what changes in it."""

    kind: str
    name: str
    status: Status
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvironmentDiff:
    environment: str
    items: tuple[ItemDiff, ...] = field(default=())


# Fields of DesiredState that say which pass this is (and which reconciler instance acts),
# not what git wants.
NOT_DESIRED: Final = frozenset({"environment", "commit", "instance"})
# Fields whose records are folded into their parent's path (``image``, not ``spec.image``).
_FOLDED: Final = frozenset({"spec"})
# Sequences of names that are sets (sorted by the loader): shown as added/removed members.
_SETS: Final = frozenset({"hosts", "roles"})
# Records whose sequence reads best whole, on one line (``canary.steps: 10%,50% -> 5%,50%``).
_WHOLE: Final = (CanaryStep,)
# How an absent value (None) reads, by field name.
_NONE: Final = {
    "limit": "all",
    "ssh": "local",
    "docker_socket": "/var/run/docker.sock",
    "key": "default",
    "known_hosts": "~/.ssh/known_hosts",
    "command": "image default",
    "args": "image default",
    "memory_bytes": "unlimited",
    "nano_cpus": "unlimited",
    "logging": "engine default",
    "canary": "none",
    "default_service": "none",
    "tls_certificate": "none",
    "tls_acme": "none",
    "host": "any",
    "path_prefix": "any",
}
_LABELS: Final = {"memory_bytes": "memory", "nano_cpus": "cpus"}


def diff_states(base: DesiredState, head: DesiredState) -> EnvironmentDiff:
    """Every difference between two desired states of one environment, as items.

    Hosts, services and load balancers are items of their own; every other field of
    ``DesiredState`` (``rollout``, and whatever is added later) is an item of kind
    'environment'. Items that did not change are left out.
    """
    own: list[str] = []
    named: list[ItemDiff] = []
    for f in fields(DesiredState):
        if f.name in NOT_DESIRED:
            continue
        old, new = getattr(base, f.name), getattr(head, f.name)
        if _keyed(old, new):
            named += _items(_singular(f.name), old, new)
        else:
            found = changes(old, new, atomic=_WHOLE, at=(Field(f.name),))
            own += _lines(found, base, head)
    items = [ItemDiff("environment", head.environment, "changed", tuple(own))] if own else []
    return EnvironmentDiff(environment=head.environment, items=tuple(items + named))


def _items(kind: str, old: tuple[Any, ...], new: tuple[Any, ...]) -> list[ItemDiff]:
    before, after = by_key(old), by_key(new)
    out = []
    for key in [*before, *(k for k in after if k not in before)]:
        if key not in before:
            found = changes(ABSENT, after[key], atomic=_WHOLE)
            out.append(ItemDiff(kind, key, "added", tuple(_lines(found, ABSENT, after[key]))))
        elif key not in after:
            out.append(ItemDiff(kind, key, "removed"))
        else:
            found = changes(before[key], after[key], atomic=_WHOLE)
            if lines := _lines(found, before[key], after[key]):
                out.append(ItemDiff(kind, key, "changed", tuple(lines)))
    return out


# --------------------------------------------------------------------------- the lines


def _lines(found: list[Change], base: Any, head: Any, scope: tuple[str, ...] = ()) -> list[str]:
    """The lines of ``found``, the changes from ``base`` to ``head`` (a description of
    ``head`` when ``base`` is ABSENT); ``scope``: names of what encloses both."""
    describing = base is ABSENT
    out: list[str] = []
    for change in found:
        *steps, last = change.path
        labels, names = _scope(steps, scope)
        old, new = change.old, change.new
        if isinstance(last, Field):
            names = names if last.name in _FOLDED else [*names, last.name]
            name = names[-1] if names else ""
            if name in _SETS and isinstance(old, tuple) and isinstance(new, tuple):
                member = _singular(name)
                out += [_line(labels, member, f"{_text(v)} added") for v in new if v not in old]
                out += [_line(labels, member, f"{_text(v)} removed") for v in old if v not in new]
            else:
                out.append(_change(labels, _where(names), name, old, new))
        elif isinstance(last, Key):
            where = f"{_where(names)} {_text(last.key)}"
            if old is ABSENT:
                shown = _text(new)
                out.append(_line(labels, where, f"= {shown}" if describing else f"added ({shown})"))
            elif new is ABSENT:
                out.append(_line(labels, where, "removed"))
            else:
                out.append(_line(labels, where, f"changed ({_text(old)} -> {_text(new)})"))
        elif isinstance(last, Item):
            label = f"{_member(names)} {last.index + 1}"
            if old is ABSENT:
                shown = _shown("", new)
                out.append(_line(labels, label, shown if describing else f"added ({shown})"))
            else:
                out.append(_line(labels, label, f"removed (was {_shown('', old)})"))
        else:  # a member added or removed (one on both sides is walked into)
            label = f"{_member(names)} {_text(last.key)}"
            if new is ABSENT:
                out.append(_line(labels, label, "removed"))
            elif releases := _releases_beside(change.path, base, head):
                out += _release_added(labels, label, *releases)
            else:
                out.append(_line(labels, label, f"added ({_shown('', new)})"))
    return out


def _scope(steps: list[Step], scope: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """The names of the elements ``steps`` pass through (``release v2``, ``route 1``),
    after ``scope``; and the field names after the last of them (folded ones left out)."""
    labels, names = list(scope), []
    for step in steps:
        if isinstance(step, Field):
            if step.name not in _FOLDED:
                names.append(step.name)
        elif isinstance(step, Member):
            labels.append(f"{_member(names)} {_text(step.key)}")
            names = []
        elif isinstance(step, Item):
            labels.append(f"{_member(names)} {step.index + 1}")
            names = []
    return tuple(labels), names


def _releases_beside(
    path: tuple[Step, ...], base: Any, head: Any
) -> tuple[Release, dict[str, Release], dict[str, Release]] | None:
    """For a release added next to others: it, the releases before and after (read from
    ``base`` and ``head``, unmasked); None for anything else."""
    added = _at(head, path)
    if not isinstance(added, Release):
        return None
    before = by_key(_at(base, path[:-1]))
    return (added, before, by_key(_at(head, path[:-1]))) if before else None


def _release_added(
    labels: tuple[str, ...], label: str, rel: Release, before: dict[str, Release],
    after: dict[str, Release],
) -> list[str]:
    """A release added next to others is shown against the one it runs next to
    (``_baseline``): how the new one differs is what a reviewer needs."""
    base = _baseline(before, after)
    vs = (*labels, f"{label} (vs {_text(base.revision)})")
    found = [c for c in changes(base, rel, atomic=_WHOLE) if c.path[0] != Field("weight")]
    return [_line(labels, label, f"added at weight {rel.weight}%"), *_lines(found, base, rel, vs)]


def _baseline(before: dict[str, Release], after: dict[str, Release]) -> Release:
    """The heaviest release kept on both sides, as it is after the change; else the
    heaviest one before (a new release replacing all others)."""
    kept = [r for k, r in after.items() if k in before]
    return max(kept or before.values(), key=lambda r: r.weight)


def _at(root: Any, path: Any) -> Any:
    """The value at ``path`` (steps) in ``root``, unmasked."""
    value = root
    for step in path:
        if isinstance(step, Field):
            value = getattr(value, step.name)
        elif isinstance(step, Member):
            value = by_key(value)[step.key]
        elif isinstance(step, Item):
            value = value[step.index]
    return value


# --------------------------------------------------------------------------- rendering


def _line(scope: tuple[str, ...], where: str, text: str) -> str:
    """``scope: where text``, or ``where text`` outside any named element."""
    return f"{', '.join(scope)}: {where} {text}" if scope else f"{where} {text}"


def _change(scope: tuple[str, ...], where: str, name: str, old: Any, new: Any) -> str:
    """``where: old -> new`` (``where: new`` when describing); the colon is dropped after
    a scope, which has one already (``release v2: image a:v2 -> a:v3``)."""
    text = _shown(name, new) if old is ABSENT else f"{_shown(name, old)} -> {_shown(name, new)}"
    return _line(scope, where, text) if scope else f"{where}: {text}"


def _where(path: Sequence[str]) -> str:
    """Dotted field names as the manifests spell them (``health.interval``, ``memory``)."""
    return ".".join(_LABELS.get(p, _unitless(p)) for p in path)


def _member(path: Sequence[str]) -> str:
    """What one element of the sequence at ``path`` is called (``release``, ``route``)."""
    return " ".join((*(_where((p,)) for p in path[:-1]), _singular(path[-1])))


def _shown(name: str, value: Any) -> str:
    """One value as a reviewer reads it: units, 'all'/'local' for None, records compact."""
    if value is None:
        return _NONE.get(name, "none")
    if name and is_secretish(name):
        return MASK
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, CanaryStep):
        return _step(value)
    if is_record(value):
        key = key_field(value)
        parts = (
            (f.name, getattr(value, f.name))
            for f in fields(value)
            if f.name != key and getattr(value, f.name) not in (None, (), "")
        )
        return ", ".join(f"{_LABELS.get(k, _unitless(k))} {_shown(k, v)}" for k, v in parts)
    if isinstance(value, tuple):
        if value and is_pair(value[0]):
            return ", ".join(f"{_text(k)}={_text(shown_env_value(k, v))}" for k, v in value)
        if value and isinstance(value[0], CanaryStep):
            return ",".join(_step(s) for s in value)
        if name in _SETS:
            return ", ".join(_text(v) for v in value)
        return json.dumps([_shown("", v) for v in value]) if value else "[]"
    if name == "weight":
        return f"{value}%"
    if name.endswith("_ms"):
        return _duration(value)
    if name.endswith("_s"):
        return f"{value}s"
    if name == "memory_bytes":
        return _bytes(value)
    if name == "nano_cpus":
        return f"{value / 1e9:g}"
    return _text(str(value))


def _step(step: CanaryStep) -> str:
    """``50%``, or ``50% (hold 2m, 500 requests)`` where it differs from the defaults."""
    default = CanaryStep(weight=step.weight)
    extra = [
        f"hold {_duration(step.min_duration_ms)}"
        if step.min_duration_ms != default.min_duration_ms
        else "",
        f"{step.min_requests} requests" if step.min_requests != default.min_requests else "",
    ]
    shown = ", ".join(x for x in extra if x)
    return f"{step.weight}% ({shown})" if shown else f"{step.weight}%"


def _text(value: str) -> str:
    """A user string as is, or JSON-quoted when it would read ambiguously (empty, edge
    spaces, an arrow or a control character)."""
    plain = value and value == value.strip() and "->" not in value and value.isprintable()
    return value if plain else json.dumps(value)


def _duration(ms: int) -> str:
    if ms == 0:
        return "0s"
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _bytes(n: int) -> str:
    for unit, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}b"


def _unitless(name: str) -> str:
    for suffix in ("_ms", "_s"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- helpers


def _keyed(old: Any, new: Any) -> bool:
    """A tuple of records that each carry a key."""
    both = (*(old if isinstance(old, tuple) else ()), *(new if isinstance(new, tuple) else ()))
    return bool(both) and all(is_record(v) and key_field(v) for v in both)


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") else name
