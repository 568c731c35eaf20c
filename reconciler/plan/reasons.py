"""Why a container is replaced: its spec label against the spec it should have.

The reasons are one rendering of ``reconciler.changes.changes`` (the other is
``reconcile diff``'s lines): env values and secret references key by key, the image and
what it resolves to, then one reason per other field that changed. Values are masked:
an env value under a secret-looking key reads ``******``.
"""

from __future__ import annotations

from typing import Any, Final

from reconciler.changes import ABSENT, Change, Field, Key, Member, changes

# The fields named in a reason when anything in them changed, in this order.
_FIELDS: Final = (
    ("command", "command"),
    ("args", "args"),
    ("port", "container port"),
    ("health", "health check"),
    ("volumes", "volumes"),
    ("memory_bytes", "memory limit"),
    ("nano_cpus", "cpu limit"),
    ("restart", "restart policy"),
    ("logging", "logging"),
    ("labels", "labels"),
    ("stop_grace_s", "stop grace period"),
)


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human reasons for the differences between two spec dicts (``identity.label_spec``
    of the running container, read back, and of the desired one), values masked.

    A field missing from a dict counts as None (a label written before the field
    existed); a missing ``env`` or ``secrets`` as empty."""
    old, new = _with_collections(old), _with_collections(new)
    found: dict[str, list[Change]] = {}
    for change in changes(old, new):
        top = change.path[0]
        assert isinstance(top, Field)  # the compared values are dicts
        found.setdefault(top.name, []).append(change)
    reasons = _env(found.get("env", [])) + _secrets(found.get("secrets", []))
    if "image" in found:
        reasons.append(f"image {old.get('image')} -> {new.get('image')}")
    elif any(c.old and c.new for c in found.get("image_id", [])):
        reasons.append(
            f"image {new.get('image')} now resolves to "
            f"{_short_id(new['image_id'])} (was {_short_id(old['image_id'])})"
        )
    reasons += [f"{label} changed" for field, label in _FIELDS if field in found]
    return reasons


def _with_collections(spec: dict[str, Any]) -> dict[str, Any]:
    return {**spec, "env": spec.get("env") or [], "secrets": spec.get("secrets") or []}


def _env(found: list[Change]) -> list[str]:
    """``env K added``, ``env K removed``, ``env K changed (a -> b)``, sorted by key."""
    out: list[tuple[str, str]] = []
    for c in found:
        last = c.path[-1]
        if not isinstance(last, Key):
            out.append(("", "env changed"))  # not a mapping on one side
        elif c.old is ABSENT:
            out.append((last.key, f"env {last.key} added"))
        elif c.new is ABSENT:
            out.append((last.key, f"env {last.key} removed"))
        else:
            out.append((last.key, f"env {last.key} changed ({c.old} -> {c.new})"))
    return [text for _, text in sorted(out)]


def _secrets(found: list[Change]) -> list[str]:
    """``secret K added``, ``removed``, or ``source or version changed``, sorted by name."""
    out: dict[str, str] = {}
    for c in found:
        if len(c.path) < 2 or not isinstance(c.path[1], Member):
            out[""] = "secrets changed"  # not a list of named references on one side
            continue
        name = c.path[1].key
        if len(c.path) == 2 and c.old is ABSENT:
            out[name] = f"secret {name} added"
        elif len(c.path) == 2 and c.new is ABSENT:
            out[name] = f"secret {name} removed"
        else:
            out[name] = f"secret {name} source or version changed"
    return [out[name] for name in sorted(out)]


def _short_id(image_id: str) -> str:
    return image_id.rsplit(":", maxsplit=1)[-1][:12]
