"""What changes between the desired states of two commits (``reconcile diff``).

Pure: compares two ``DesiredState`` values of the same environment, contacts no host.

Contract: the diff is empty exactly when the two states are equal apart from ``commit``
(and ``environment``, the same on both sides). To keep that true as the model grows, the
states are walked generically over their dataclass fields: a new field is compared (and
shown) without any change here; the tables below only make some lines read better.

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
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Final, Literal

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
    "host": "any",
    "path_prefix": "any",
}
_LABELS: Final = {"memory_bytes": "memory", "nano_cpus": "cpus"}
_ABSENT: Final = object()  # the old side of something added: lines describe the new one


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
            own += _walk(old, new, (), (f.name,))
    items = [ItemDiff("environment", head.environment, "changed", tuple(own))] if own else []
    return EnvironmentDiff(environment=head.environment, items=tuple(items + named))


def _items(kind: str, old: tuple[Any, ...], new: tuple[Any, ...]) -> list[ItemDiff]:
    before, after = _by_key(old), _by_key(new)
    out = []
    for key in _union(before, after):
        if key not in before:
            out.append(ItemDiff(kind, key, "added", tuple(_walk(_ABSENT, after[key], (), ()))))
        elif key not in after:
            out.append(ItemDiff(kind, key, "removed"))
        elif lines := _walk(before[key], after[key], (), ()):
            out.append(ItemDiff(kind, key, "changed", tuple(lines)))
    return out


# --------------------------------------------------------------------------- the walk


def _walk(old: Any, new: Any, scope: tuple[str, ...], path: tuple[str, ...]) -> list[str]:
    """Lines of what differs from ``old`` to ``new`` (every value of ``new`` when ``old``
    is ``_ABSENT``). ``scope`` names the enclosing named elements, ``path`` the fields."""
    if old is _ABSENT and new in (None, (), ""):
        return []  # nothing worth describing
    if old is not _ABSENT and old == new:
        return []
    name = path[-1] if path else ""
    if _is_record(new) and (old is _ABSENT or type(old) is type(new)):
        return _walk_record(old, new, scope, path)
    if isinstance(new, tuple) and (old is _ABSENT or isinstance(old, tuple)):
        return _walk_sequence(name, old, new, scope, path)
    return [_change(scope, _where(path), name, old, new)]


def _walk_record(old: Any, new: Any, scope: tuple[str, ...], path: tuple[str, ...]) -> list[str]:
    key = _key_field(new)
    out: list[str] = []
    for f in fields(new):
        if f.name == key:
            continue
        sub = path if f.name in _FOLDED else (*path, f.name)
        before = _ABSENT if old is _ABSENT else getattr(old, f.name)
        out += _walk(before, getattr(new, f.name), scope, sub)
    return out


def _walk_sequence(
    name: str, old: Any, new: tuple[Any, ...], scope: tuple[str, ...], path: tuple[str, ...]
) -> list[str]:
    olds: tuple[Any, ...] = () if old is _ABSENT else old
    sample = (new or olds)[0]
    if _keyed(olds, new):
        return _walk_named(old, new, scope, path)
    if _is_pair(sample):
        return _walk_pairs(old, new, scope, path)
    if _is_record(sample) and not isinstance(sample, _WHOLE):
        return _walk_positional(old, new, scope, path)
    if name in _SETS and old is not _ABSENT:
        member = _singular(name)
        return [_line(scope, member, f"{_text(v)} added") for v in new if v not in olds] + [
            _line(scope, member, f"{_text(v)} removed") for v in olds if v not in new
        ]
    return [_change(scope, _where(path), name, old, new)]


def _walk_named(
    old: Any, new: tuple[Any, ...], scope: tuple[str, ...], path: tuple[str, ...]
) -> list[str]:
    """Elements matched by key. A release added next to others is shown against the one
    it runs next to (``_baseline``): how the new one differs is what a reviewer needs."""
    what = _member(path)
    before = {} if old is _ABSENT else _by_key(old)
    after = _by_key(new)
    out: list[str] = []
    for key in _union(before, after):
        label = f"{what} {_text(key)}"
        if key in before and key in after:
            out += _walk(before[key], after[key], (*scope, label), ())
        elif key in before:
            out.append(_line(scope, label, "removed"))
        elif old is _ABSENT:  # describing something added: each element in full
            out += _walk(_ABSENT, after[key], (*scope, label), ())
        elif isinstance(after[key], Release) and before:  # (a baseline to compare with)
            rel, base = after[key], _baseline(before, after)
            out.append(_line(scope, label, f"added at weight {rel.weight}%"))
            vs = (*scope, f"{label} (vs {_text(base.revision)})")
            for f in fields(rel):
                if f.name not in ("revision", "weight"):
                    sub = () if f.name in _FOLDED else (f.name,)
                    out += _walk(getattr(base, f.name), getattr(rel, f.name), vs, sub)
        else:
            out.append(_line(scope, label, f"added ({_shown('', after[key])})"))
    return out


def _baseline(before: dict[str, Release], after: dict[str, Release]) -> Release:
    """The heaviest release kept on both sides, as it is after the change; else the
    heaviest one before (a new release replacing all others)."""
    kept = [r for k, r in after.items() if k in before]
    return max(kept or before.values(), key=lambda r: r.weight)


def _walk_positional(
    old: Any, new: tuple[Any, ...], scope: tuple[str, ...], path: tuple[str, ...]
) -> list[str]:
    """Records without a key (volumes, routes): by position, numbered from 1."""
    what = _member(path)
    olds: tuple[Any, ...] = () if old is _ABSENT else old
    out: list[str] = []
    for i in range(max(len(olds), len(new))):
        label = f"{what} {i + 1}"
        if i >= len(olds):
            shown = _shown("", new[i])
            out.append(_line(scope, label, shown if old is _ABSENT else f"added ({shown})"))
        elif i >= len(new):
            out.append(_line(scope, label, f"removed (was {_shown('', olds[i])})"))
        else:
            out += _walk(olds[i], new[i], (*scope, label), ())
    return out


def _walk_pairs(
    old: Any, new: tuple[tuple[str, str], ...], scope: tuple[str, ...], path: tuple[str, ...]
) -> list[str]:
    """Mappings (env, labels, log options) key by key, secret-looking values masked."""
    before: dict[str, str] = {} if old is _ABSENT else dict(old)
    after = dict(new)
    out: list[str] = []
    for k in _union(before, after):
        where = f"{_where(path)} {_text(k)}"
        if k not in before:
            value = _text(shown_env_value(k, after[k]))
            out.append(_line(scope, where, f"= {value}" if old is _ABSENT else f"added ({value})"))
        elif k not in after:
            out.append(_line(scope, where, "removed"))
        elif before[k] != after[k]:
            a, b = (_text(shown_env_value(k, v)) for v in (before[k], after[k]))
            out.append(_line(scope, where, f"changed ({a} -> {b})"))
    return out


# --------------------------------------------------------------------------- rendering


def _line(scope: tuple[str, ...], where: str, text: str) -> str:
    """``scope: where text``, or ``where text`` outside any named element."""
    return f"{', '.join(scope)}: {where} {text}" if scope else f"{where} {text}"


def _change(scope: tuple[str, ...], where: str, name: str, old: Any, new: Any) -> str:
    """``where: old -> new`` (``where: new`` when describing); the colon is dropped after
    a scope, which has one already (``release v2: image a:v2 -> a:v3``)."""
    text = _shown(name, new) if old is _ABSENT else f"{_shown(name, old)} -> {_shown(name, new)}"
    return _line(scope, where, text) if scope else f"{where}: {text}"


def _where(path: tuple[str, ...]) -> str:
    """Dotted field names as the manifests spell them (``health.interval``, ``memory``)."""
    return ".".join(_LABELS.get(p, _unitless(p)) for p in path)


def _member(path: tuple[str, ...]) -> str:
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
    if _is_record(value):
        key = _key_field(value)
        parts = (
            (f.name, getattr(value, f.name))
            for f in fields(value)
            if f.name != key and getattr(value, f.name) not in (None, (), "")
        )
        return ", ".join(f"{_LABELS.get(k, _unitless(k))} {_shown(k, v)}" for k, v in parts)
    if isinstance(value, tuple):
        if value and _is_pair(value[0]):
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


def _is_record(value: Any) -> bool:
    return is_dataclass(value) and not isinstance(value, type)


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _key_field(value: Any) -> str | None:
    names = {f.name for f in fields(value)}
    return next((k for k in ("name", "revision") if k in names), None)


def _keyed(old: Any, new: Any) -> bool:
    """A tuple of records that each carry a key."""
    both = (*(old if isinstance(old, tuple) else ()), *(new if isinstance(new, tuple) else ()))
    return bool(both) and all(_is_record(v) and _key_field(v) for v in both)


def _by_key(values: tuple[Any, ...]) -> dict[str, Any]:
    out = {}
    for v in values:
        key = _key_field(v)
        assert key is not None  # callers check _keyed first
        out[str(getattr(v, key))] = v
    return out


def _union(before: dict[str, Any], after: dict[str, Any]) -> Iterator[str]:
    """Keys in the old order, then the new ones in theirs (releases keep their order)."""
    yield from before
    yield from (k for k in after if k not in before)


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") else name
