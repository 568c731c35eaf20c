"""Parsing of the unit-carrying strings of manifests (already checked by the schema)."""

from __future__ import annotations

_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_BYTES = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def duration_ms(text: str) -> int:
    """``"500ms"`` -> 500, ``"2m"`` -> 120000. Raises ValueError on anything else."""
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * _DURATION_MS[unit]
    raise ValueError(f"not a duration: {text!r}")


def memory_bytes(text: str) -> int:
    """``"256m"`` -> 268435456. Raises ValueError on anything else."""
    unit = text[-1:].lower()
    if unit in _BYTES and text[:-1].isdigit():
        return int(text[:-1]) * _BYTES[unit]
    raise ValueError(f"not a memory size: {text!r}")
