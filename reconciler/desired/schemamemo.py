"""A memo of the manifest files that passed the schema check, kept in the state dir.

A pass reads every manifest file of a commit, and most are unchanged since the last
pass: checking them against the JSON Schemas again (and importing jsonschema to do so,
about 0.1 s) gives the same answer. A file's entry is the SHA-256 of its bytes; the
memo's first line is the digest of the schemas and of ``MEMO_VERSION``, so a changed
schema (or a new way of checking) starts a new memo and every file is checked again.
A file with any schema problem is never remembered: its errors are reported each time.

Only the schema check is skipped: parsing and the semantic checks of the repository run
on every pass. The memo is in the reconciler's private state dir (0600, like its
history); an unreadable or foreign memo is an empty one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from reconciler import statedir

MEMO_VERSION = "1"  # bump when what check_document accepts changes without a schema change
MAX_ENTRIES = 4096  # files remembered; the oldest go first
FILE_NAME = "schema-memo"


@cache
def schema_digest(schema_dir: Path | None = None) -> str:
    """Digest of every schema file (name and bytes) and ``MEMO_VERSION``."""
    from reconciler.desired.schema import SCHEMA_DIR

    h = hashlib.sha256(f"schema-memo {MEMO_VERSION}\n".encode())
    for path in sorted((schema_dir or SCHEMA_DIR).glob("*.json")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def file_key(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class SchemaMemo:
    """The files (by content digest) that passed the schema check of ``salt``."""

    def __init__(self, path: Path, salt: str | None = None) -> None:
        self.path = path
        self.salt = salt or schema_digest()
        self.keys: dict[str, None] = {}  # insertion-ordered: oldest first
        self.changed = False
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines = path.read_text().split("\n")
            if lines[0] == self.salt:
                self.keys = dict.fromkeys(k for k in lines[1:] if len(k) == 64)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> SchemaMemo:
        return cls(state_dir / FILE_NAME)

    def passed(self, raw: bytes) -> bool:
        """True when a file with exactly these bytes passed the schema check before."""
        return file_key(raw) in self.keys

    def remember(self, files: Iterable[bytes]) -> None:
        """Note files that passed the schema check (all their documents)."""
        for raw in files:
            key = file_key(raw)
            if key not in self.keys:
                self.keys[key] = None
                self.changed = True

    def save(self) -> None:
        """Write the memo (atomically, 0600) when it changed and the state dir exists
        (a ``plan`` that made no state dir leaves none behind). Never raises for I/O:
        a memo not written only means the next pass checks those files again."""
        if not self.changed or not self.path.parent.is_dir():
            return
        keys = list(self.keys)[-MAX_ENTRIES:]
        text = "\n".join([self.salt, *keys]) + "\n"
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.replace(tmp, self.path)
            except OSError:
                os.unlink(tmp)
                raise
            statedir.tighten_existing(self.path)
            self.changed = False
