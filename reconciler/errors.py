"""The one error hierarchy of the reconciler.

Every error the reconciler raises on purpose derives from ``ReconcilerError``; the CLI
turns them into a message and exit code 1. Messages name the file, field and bad value
(never a secret value).

Messages quote user input (values, mapping keys, file names), so every message passes
through ``printable`` where it is formatted (``Problem.__str__``, and
``ReconcilerError.report``, which is what the CLI prints): a CR/LF in a key cannot forge
an output line and an ESC never reaches a terminal, whatever a caller put in a message.
"""

from __future__ import annotations

from dataclasses import dataclass


def printable(text: str) -> str:
    """``text`` with every non-printable character written as Python would escape it.

    Line breaks (``\\n``, ``\\r``, U+2028...), NUL, ESC and other control characters,
    format characters (zero-width, bidi overrides) and separators other than the plain
    space become ``\\n``, ``\\x1b``, ``\\u202e``...; everything else is unchanged, so a
    message that already quotes a value with ``repr`` reads the same. The result is one
    line of text that is safe to print on a terminal.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class ReconcilerError(Exception):
    """Base of every expected failure (bad input, unreachable host, failed step)."""

    def report(self) -> list[str]:
        """The lines the CLI prints for this error, each escaped with ``printable``.

        The first line starts with ``error: ``; further lines of a multi-line message
        (e.g. ``haproxy -c`` output) are indented, so no text inside a message can pass
        for a line of its own."""
        first, *rest = str(self).split("\n")
        return [f"error: {printable(first)}", *(f"  {printable(line)}" for line in rest)]


@dataclass(frozen=True)
class Problem:
    """One finding about the manifests: where it is and what is wrong."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        """``file:line:column: field: message`` on one line, every part escaped."""
        where = f"{printable(self.file)}:{self.line}:{self.column}"
        field = printable(self.field) if self.field else "(document)"
        return f"{where}: {field}: {printable(self.message)}"


class ManifestError(ReconcilerError):
    """The manifests are invalid; ``problems`` holds every finding of the repository."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(
            problems, key=lambda p: (p.file, p.line, p.column, p.field, p.message)
        )
        super().__init__("\n".join(str(p) for p in self.problems))

    def report(self) -> list[str]:
        """One ``error: file:line:column: field: message`` line per problem (escaped by
        ``Problem.__str__``), then the count."""
        found = f"{len(self.problems)} problem(s) found; nothing was changed."
        return [*(f"error: {p}" for p in self.problems), found]


class SourceError(ReconcilerError):
    """The manifests repository, branch, commit or path cannot be read."""


class ObserveError(ReconcilerError):
    """Live state of a host (Docker engine, HAProxy) cannot be read."""


class ClusterError(ReconcilerError):
    """etcd mode: the cluster refused or failed a request (the message names the
    endpoint and the key, never a value)."""


class EtcdUnavailable(ClusterError):
    """No endpoint of the etcd cluster answered (each one tried is named with why):
    down, unreachable, TLS refused, or no quorum. Transient: retry later."""


class FencedOut(ClusterError):
    """This replica is no longer the confirmed leader of its environment (its lease
    expired or could not be renewed in time, or the leader key is no longer its own):
    it must not take another step. The pass ends; the replica stands by."""
