"""Response times per request from HAProxy's request log, read from a ring buffer.

When a service has a canary, the rendered config declares a ``ring`` and logs every
request into it in ``LOG_FORMAT``; the reconciler reads it through the stats socket
(``show events``), so no syslog daemon or listening socket is needed. Each line carries
its process id and request counter: lines already read are skipped (``LogCursor``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

RING = "reqlog"
# %Ta: active time of the request (receiving it to the end of the response), the time
# a client waited; %Tr: the server's response time (-1 when it never answered).
LOG_FORMAT = "reqlog be=%b srv=%s st=%ST tr=%Tr ta=%Ta id=%pid.%rt"
_LINE = re.compile(r"reqlog be=(\S+) srv=(\S+) st=(-?\d+) tr=(-?\d+) ta=(-?\d+) id=(\d+)\.(\d+)")


@dataclass(frozen=True)
class Request:
    backend: str
    server: str
    status: int
    response_ms: int
    total_ms: int
    pid: int
    number: int


def parse_events(text: str) -> list[Request]:
    """Request lines of ``show events reqlog`` output; other lines are skipped."""
    out = []
    for m in _LINE.finditer(text):
        be, srv, st, tr, ta, pid, n = m.groups()
        out.append(Request(be, srv, int(st), int(tr), int(ta), int(pid), int(n)))
    return out


@dataclass
class LogCursor:
    """The highest request number read per HAProxy process: only newer ones count."""

    seen: dict[int, int] = field(default_factory=dict)

    def new(self, requests: Iterable[Request]) -> list[Request]:
        fresh = []
        top = dict(self.seen)
        for r in requests:
            if r.number > self.seen.get(r.pid, -1):
                fresh.append(r)
                top[r.pid] = max(top.get(r.pid, -1), r.number)
        # Keep only the processes still logging (a reload retires the old one).
        self.seen = {pid: n for pid, n in top.items() if pid in {r.pid for r in requests}}
        return fresh


def percentile(values: list[int], q: float) -> float | None:
    """The q-quantile (0-1) by nearest rank; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return float(ordered[rank])
