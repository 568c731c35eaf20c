"""Numbered lines of HAProxy's text outputs, for the parsers' error messages."""

from __future__ import annotations


def numbered(text: str) -> list[tuple[int, str]]:
    """The non-empty lines of ``text`` with their 1-based numbers."""
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def where(number: int, line: str) -> str:
    """``line N: 'text'`` (a long line shortened), to say which line did not fit."""
    shown = line if len(line) <= 120 else line[:117] + "..."
    return f"line {number}: {shown!r}"
