"""The one error hierarchy of the reconciler.

Every error the reconciler raises on purpose derives from ``ReconcilerError``; the CLI
turns them into a message and exit code 1. Messages name the file, field and bad value
(never a secret value).
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Base of every expected failure (bad input, unreachable host, failed step)."""


@dataclass(frozen=True)
class Problem:
    """One finding about the manifests: where it is and what is wrong."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        field = self.field or "(document)"
        return f"{where}: {field}: {self.message}"


class ManifestError(ReconcilerError):
    """The manifests are invalid; ``problems`` holds every finding of the repository."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(
            problems, key=lambda p: (p.file, p.line, p.column, p.field, p.message)
        )
        super().__init__("\n".join(str(p) for p in self.problems))


class SourceError(ReconcilerError):
    """The manifests repository, branch, commit or path cannot be read."""


class ObserveError(ReconcilerError):
    """Live state of a host (Docker engine, HAProxy) cannot be read."""
