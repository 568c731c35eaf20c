"""Secret values out of every text the reconciler stores or prints.

Plans, diffs and messages never hold a secret value by construction; what a container
prints does (its log tail, its health check's output, an engine error quoting its
config). A ``Redactor`` belongs to one pass: the executor tells it every secret value it
reads or finds in a container's environment, and everything the pass records in the
history or hands to the CLI passes through ``scrub`` first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from reconciler.identity import MASK, is_secretish

# A secret-looking env value shorter than this is not worth blanking out of every
# message ("1" would turn "exit code 1" into "exit code ******"); values of ``secrets``
# are blanked whatever their length.
MIN_ENV_VALUE = 4


class Redactor:
    """A set of values to replace by ``******``; thread-safe (hosts run in parallel)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        """Hide ``value``, and each line of a multi-line value (a log line holds one)."""
        parts = {value, value.strip(), *(line.strip() for line in value.splitlines())}
        with self._lock:
            self._values |= {p for p in parts if p}

    def add_env(self, env: Mapping[str, str], secret_names: Iterable[str] = ()) -> None:
        """Hide the values of ``secret_names`` in ``env`` and of its secret-looking keys
        (``identity.is_secretish``) of at least MIN_ENV_VALUE characters."""
        names = set(secret_names)
        for key, value in env.items():
            if key in names or (is_secretish(key) and len(value) >= MIN_ENV_VALUE):
                self.add(value)

    def scrub(self, text: str) -> str:
        """``text`` with every known value replaced by ``******`` (longest first, so a
        value that contains another is hidden whole)."""
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return text


def env_of(config_env: Iterable[str] | None) -> dict[str, str]:
    """Docker's ``Config.Env`` list (``KEY=value``) as a mapping."""
    out: dict[str, str] = {}
    for item in config_env or ():
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
    return out
