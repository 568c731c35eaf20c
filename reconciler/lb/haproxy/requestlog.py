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
NO_SERVER_NAME = "<NOSRV>"  # %s of a request HAProxy answered itself
# %Ts: when the request arrived (Unix seconds); %Tr: the server's response time, from
# sending the request to receiving its headers (time to first byte; -1 when it never
# answered); %Ta: the request's active time (receiving it to the end of the response),
# what a client waited; %B: bytes sent to the client; %HM and %HPO: the method and the
# path without query string (last: a path is the only field that could hold odd text,
# and HAProxy escapes spaces and control characters in it).
LOG_FORMAT = "reqlog be=%b srv=%s st=%ST tr=%Tr ta=%Ta b=%B t=%Ts id=%pid.%rt m=%HM p=%HPO"
_LINE = re.compile(
    r"reqlog be=(\S+) srv=(\S+) st=(-?\d+) tr=(-?\d+) ta=(-?\d+) b=(\d+) t=(\d+) "
    r"id=(\d+\.\d+) m=(\S*) p=(\S*)"
)
# The fields of a ``Row`` (``parse_rows``), all as logged (strings): backend, server,
# status, TTFB, total time, bytes, arrival time, "pid.number", method, path.
BACKEND, SERVER, STATUS, TTFB, TOTAL, BYTES, TIME, ID, METHOD, PATH = range(10)
Row = tuple[str, str, str, str, str, str, str, str, str, str]


def parse_rows(text: str) -> list[Row]:
    """The request lines of ``text`` as tuples of strings (see ``Row``), other lines
    skipped: one ``findall`` (C speed), for the records collector's hot path."""
    return _LINE.findall(text)


@dataclass(frozen=True)
class Request:
    """One request as HAProxy logged it (times in ms; -1: not reached)."""

    backend: str
    server: str
    status: int
    response_ms: int  # time to first byte from the server (%Tr)
    total_ms: int  # what the client waited (%Ta)
    pid: int
    number: int
    bytes: int = 0
    time: int = 0  # Unix seconds it arrived
    method: str = ""
    path: str = ""


def parse_events(text: str) -> list[Request]:
    """Request lines of ``show events reqlog`` output; other lines are skipped."""
    out = []
    for be, srv, st, tr, ta, size, ts, rid, method, path in parse_rows(text):
        pid, _, n = rid.partition(".")
        out.append(
            Request(
                be,
                srv,
                int(st),
                int(tr),
                int(ta),
                int(pid),
                int(n),
                int(size),
                int(ts),
                method,
                path,
            )
        )
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
