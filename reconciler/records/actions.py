"""What a request was: its action, from the service's declared actions or a path template.

A request matching a declared action (``actions:`` in the service manifest: a path
template whose ``{name}`` segments match one segment each, and optionally a method) is
named by it. Any other request is named ``METHOD /path`` with numeric ids, UUIDs and
long hex or base64-like tokens replaced by placeholders, so ``GET /orders/17`` and
``GET /orders/18`` are one action. Names are bounded per service: the declared ones and
the first ``max_actions`` others to appear; later new ones count as ``other``, so
cardinality (rows kept, Prometheus series) cannot explode whatever clients send.
Pure; an ``ActionTable`` is the one stateful piece (which names it admitted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from reconciler.model import ActionSpec

OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_SEGMENTS = 6  # a deeper path is cut and ends in "/..."
MAX_SEGMENT = 40  # a longer segment is a token whatever it holds

_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{16,}")
# A long run of letters and digits with at least one digit: a key, hash or session id.
_TOKEN = re.compile(r"(?=.*\d)[A-Za-z0-9_=+-]{20,}")
_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]{0,31}\}")


def template(path: str) -> str:
    """``path`` (no query string) with variable segments replaced: ``{id}`` for numbers,
    ``{uuid}``, ``{hex}`` for 16+ hex digits, ``{token}`` for other long tokens."""
    if not path.startswith("/"):
        return "/"
    parts = path.split("/")[1:]
    out = []
    for seg in parts[:MAX_SEGMENTS]:
        if _NUMBER.fullmatch(seg):
            out.append("{id}")
        elif _UUID.fullmatch(seg):
            out.append("{uuid}")
        elif _HEX.fullmatch(seg):
            out.append("{hex}")
        elif len(seg) > MAX_SEGMENT or _TOKEN.fullmatch(seg):
            out.append("{token}")
        else:
            out.append(seg)
    return "/" + "/".join(out) + ("/..." if len(parts) > MAX_SEGMENTS else "")


def compile_path(path: str) -> re.Pattern[str]:
    """The regular expression of a declared path template: ``{name}`` matches one
    non-empty segment, everything else itself."""
    pieces = []
    pos = 0
    for m in _PARAM.finditer(path):
        pieces.append(re.escape(path[pos : m.start()]))
        pieces.append(r"[^/]+")
        pos = m.end()
    pieces.append(re.escape(path[pos:]))
    return re.compile("".join(pieces))


@dataclass
class ActionTable:
    """The action names of one service's requests (see the module doc)."""

    declared: tuple[ActionSpec, ...] = ()
    limit: int = 20
    admitted: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._patterns = [(a, compile_path(a.path)) for a in self.declared]

    def name(self, method: str, path: str) -> str:
        """The action of one request (``method`` and ``path`` as HAProxy logged them)."""
        for spec, pattern in self._patterns:
            if (spec.method is None or spec.method == method) and pattern.fullmatch(path):
                return spec.name
        if method not in METHODS or not path.startswith("/"):
            return OTHER
        candidate = f"{method} {template(path)}"
        if candidate in self.admitted:
            return candidate
        if len(self.admitted) < self.limit:
            self.admitted.add(candidate)
            return candidate
        return OTHER
