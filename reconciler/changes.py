"""What changed between two values: one structured walk, rendered by its users.

``changes(old, new)`` compares two values of the model (frozen dataclasses, tuples) or of
its plain form (dicts and lists, as a spec label reads back) and lists every difference
as a ``Change``: where it is (a path of steps), the old value and the new one, both
secret-masked. Two renderings read the same list: ``reconcile diff``'s lines
(``reconciler.desired.diff``) and the planner's reasons for replacing a container
(``reconciler.plan.reasons``).

Pure. The walk, generic over the fields, so a field added to the model is compared
without a change here:

- Records (dataclass instances of one type, or dicts; a key missing from a dict is
  None) field by field. A record's key field (``name``, else ``revision``) names it and
  is not compared.
- Sequences of keyed records (every element on both sides has a key) by key, in the old
  order then the new one's: a member on both sides is walked (``Member`` step), a member
  on one side only is one Change, ``ABSENT`` on the other side.
- Sequences of pairs (mappings: env, labels, log options) key by key (``Key`` step).
- Other sequences of records by position (``Item`` step), unless their records are of an
  ``atomic`` type; an element on one side only is one Change.
- Anything else whole: scalars, sequences of scalars or of atomic records, a record
  against None or against a record of another type.

With ``old`` ``ABSENT`` the walk describes ``new`` (something added): every non-empty
part of it is a Change from ``ABSENT``, keyed members field by field like records,
positional elements whole.

Secret masking, at any depth of a Change's values: the value of a pair whose key looks
secret (``identity.shown_env_value``) and any non-empty value of a field whose name looks
secret (``identity.is_secretish``) are ``identity.MASK``. Equality is decided on the
real values, before masking, so a changed secret is still a Change (``****** -> ******``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Final

from reconciler.identity import MASK, is_secretish, shown_env_value


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final[Any] = _Absent()  # the side of a Change where the thing does not exist


@dataclass(frozen=True)
class Field:
    """A field of a record (a dict key of a plain record)."""

    name: str


@dataclass(frozen=True)
class Member:
    """The element with this key of a sequence of keyed records."""

    key: str


@dataclass(frozen=True)
class Item:
    """The element at this position (from 0) of a sequence of records without a key."""

    index: int


@dataclass(frozen=True)
class Key:
    """The value under this key of a mapping stored as pairs."""

    key: str


Step = Field | Member | Item | Key


@dataclass(frozen=True)
class Change:
    """One difference: at ``path`` (from the compared values), ``old`` became ``new``;
    ``ABSENT`` on the side where it does not exist. Values are masked (module doc)."""

    path: tuple[Step, ...]
    old: Any
    new: Any


def changes(
    old: Any, new: Any, *, atomic: tuple[type, ...] = (), at: tuple[Step, ...] = ()
) -> list[Change]:
    """Every difference from ``old`` to ``new`` (a description of ``new`` when ``old`` is
    ``ABSENT``), in the order of the walk (module doc). ``atomic``: record types whose
    sequences are compared whole, not by position. ``at``: the path of the compared
    values themselves, put before every Change's path."""
    out: list[Change] = []
    _walk(old, new, at, atomic, out)
    return out


# --------------------------------------------------------------------------- the walk


def _walk(
    old: Any, new: Any, path: tuple[Step, ...], atomic: tuple[type, ...], out: list[Change]
) -> None:
    if old is ABSENT and _empty(new):
        return  # nothing worth describing
    if old is not ABSENT and old == new:
        return
    if is_record(new) and (old is ABSENT or type(old) is type(new)):
        key = key_field(new)
        for name in _field_names(old, new):
            if name != key:
                before = ABSENT if old is ABSENT else _get(old, name)
                _walk(before, _get(new, name), (*path, Field(name)), atomic, out)
        return
    if _is_sequence(new) and (old is ABSENT or _is_sequence(old)):
        olds: Any = () if old is ABSENT else old
        both = (*olds, *new)
        if not both:
            pass  # () against []: different only in kind, shown whole below
        elif all(is_record(v) and key_field(v) for v in both):
            _walk_keyed(old, new, path, atomic, out)
            return
        elif is_pair((new or olds)[0]):
            _walk_pairs(old, new, path, out)
            return
        elif is_record((new or olds)[0]) and not isinstance((new or olds)[0], atomic):
            _walk_positional(old, new, path, atomic, out)
            return
    name = path[-1].name if path and isinstance(path[-1], Field) else ""
    out.append(Change(path, _mask(name, old), _mask(name, new)))


def _walk_keyed(
    old: Any, new: Any, path: tuple[Step, ...], atomic: tuple[type, ...], out: list[Change]
) -> None:
    before = {} if old is ABSENT else by_key(old)
    after = by_key(new)
    for key in _union(before, after):
        where = (*path, Member(key))
        if key in before and key in after:
            _walk(before[key], after[key], where, atomic, out)
        elif key in before:
            out.append(Change(where, _mask("", before[key]), ABSENT))
        elif old is ABSENT:  # describing: field by field, like a record
            _walk(ABSENT, after[key], where, atomic, out)
        else:
            out.append(Change(where, ABSENT, _mask("", after[key])))


def _walk_pairs(old: Any, new: Any, path: tuple[Step, ...], out: list[Change]) -> None:
    before: dict[str, str] = {} if old is ABSENT else dict(old)
    after: dict[str, str] = dict(new)
    for k in _union(before, after):
        where = (*path, Key(k))
        if k not in before:
            out.append(Change(where, ABSENT, shown_env_value(k, after[k])))
        elif k not in after:
            out.append(Change(where, shown_env_value(k, before[k]), ABSENT))
        elif before[k] != after[k]:
            out.append(Change(where, shown_env_value(k, before[k]), shown_env_value(k, after[k])))


def _walk_positional(
    old: Any, new: Any, path: tuple[Step, ...], atomic: tuple[type, ...], out: list[Change]
) -> None:
    olds: Any = () if old is ABSENT else old
    for i in range(max(len(olds), len(new))):
        where = (*path, Item(i))
        if i >= len(olds):
            out.append(Change(where, ABSENT, _mask("", new[i])))
        elif i >= len(new):
            out.append(Change(where, _mask("", olds[i]), ABSENT))
        else:
            _walk(olds[i], new[i], where, atomic, out)


# --------------------------------------------------------------------------- masking


def _mask(name: str, value: Any) -> Any:
    """``value`` with every secret in it masked (module doc); the same object when it
    holds none."""
    if value is ABSENT or _empty(value):
        return value
    if name and is_secretish(name):
        return MASK
    if is_dataclass(value) and not isinstance(value, type):
        masked = {f.name: _mask(f.name, getattr(value, f.name)) for f in fields(value)}
        if all(masked[k] is getattr(value, k) for k in masked):
            return value
        return replace(value, **masked)
    if isinstance(value, dict):
        return {k: _mask(k, v) for k, v in value.items()}
    if _is_sequence(value):
        if all(is_pair(v) for v in value):
            return type(value)(type(p)((p[0], shown_env_value(p[0], p[1]))) for p in value)
        return type(value)(_mask("", v) for v in value)
    return value


# --------------------------------------------------------------------------- helpers


def is_record(value: Any) -> bool:
    """A dataclass instance or a dict: walked field by field."""
    return (is_dataclass(value) and not isinstance(value, type)) or isinstance(value, dict)


def is_pair(value: Any) -> bool:
    """One (key, value) entry of a mapping stored as pairs."""
    return (
        _is_sequence(value) and len(value) == 2 and all(isinstance(v, str) for v in value)
    )


def key_field(value: Any) -> str | None:
    """The field that names a record (``name``, else ``revision``); None without one."""
    names = value.keys() if isinstance(value, dict) else {f.name for f in fields(value)}
    return next((k for k in ("name", "revision") if k in names), None)


def by_key(values: Any) -> dict[str, Any]:
    """Keyed records by their key (as text), in their order."""
    out: dict[str, Any] = {}
    for v in values:
        key = key_field(v)
        assert key is not None  # callers check every element has one
        out[str(_get(v, key))] = v
    return out


def _is_sequence(value: Any) -> bool:
    return isinstance(value, tuple | list)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | tuple | list) and not value)


def _get(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, dict) else getattr(record, name)


def _field_names(old: Any, new: Any) -> list[str]:
    if isinstance(new, dict):
        names = [] if old is ABSENT else list(old)
        return names + [k for k in new if k not in names]
    return [f.name for f in fields(new)]


def _union(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Keys in the old order, then the new ones in theirs (releases keep their order)."""
    return [*before, *(k for k in after if k not in before)]
