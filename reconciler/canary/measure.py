"""Requests and errors per revision, from HAProxy's per-server counters, as deltas.

HAProxy counts per server and per process: a reload starts a new worker whose counters
begin at 0, and a removed server takes its counters with it. ``Meter`` keeps the last
reading of every (LB host, backend, server) and turns each new reading into increments:
a counter that went down, or a new HAProxy generation (worker), means the count started
again from 0, so the new reading itself is the increment. The first reading of an LB
host only sets the starting point. What a server counted between the last reading and
a reload is lost (at most one reading interval's worth).

A server's requests are its responses of every class plus its response errors
(``eresp``) and connection errors (``econ``); its errors are the 5xx responses plus
``eresp`` and ``econ``: failures of the server as HAProxy saw them, plus its 4xx
responses when the canary's analysis counts them (``errors_4xx``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.canary.decision import Counts
from reconciler.model import ServerStats

Key = tuple[str, str, str]  # (LB host, backend, server)


Reading = tuple[int, int, int]  # requests, errors (5xx, eresp, econ), 4xx


def reading(s: ServerStats) -> Reading:
    """(requests, errors, 4xx) counted so far by one server in one HAProxy process."""
    responses = s.hrsp_1xx + s.hrsp_2xx + s.hrsp_3xx + s.hrsp_4xx + s.hrsp_5xx + s.hrsp_other
    return responses + s.eresp + s.econ, s.hrsp_5xx + s.eresp + s.econ, s.hrsp_4xx


@dataclass
class Meter:
    """Last readings, by server, and the HAProxy generation they were read in."""

    last: dict[Key, Reading] = field(default_factory=dict)
    generation: dict[str, str] = field(default_factory=dict)  # LB host -> generation

    def update(
        self,
        lb_host: str,
        generation: str,
        stats: Iterable[ServerStats],
        revision_of: Mapping[tuple[str, str], str],
        errors_4xx: bool = False,
    ) -> dict[tuple[str, str], Counts]:
        """Increments since the last reading, summed per (backend, revision); servers
        not in ``revision_of`` (backend, server -> revision) are skipped; 4xx are
        errors with ``errors_4xx``."""
        known = self.generation.get(lb_host)
        restarted = known is not None and known != generation
        self.generation[lb_host] = generation
        out: dict[tuple[str, str], Counts] = {}
        seen: set[Key] = set()
        for s in stats:
            revision = revision_of.get((s.backend, s.server))
            if revision is None:
                continue
            key = (lb_host, s.backend, s.server)
            seen.add(key)
            now = reading(s)
            before = self.last.get(key)
            self.last[key] = now
            went_down = before is not None and any(n < b for n, b in zip(now, before, strict=True))
            if known is None:
                delta: Reading = (0, 0, 0)  # the first reading only sets the starting point
            elif restarted or before is None or went_down:
                # A new worker, a server that appeared, or a count that started again:
                # everything counted is new since the last reading.
                delta = now
            else:
                # 4xx unknown (-1: a state saved before they were kept): none new
                new_4xx = now[2] - before[2] if before[2] >= 0 else 0
                delta = (now[0] - before[0], now[1] - before[1], new_4xx)
            errors = min(delta[0], delta[1] + (delta[2] if errors_4xx else 0))
            prev = out.get((s.backend, revision), Counts(0, 0))
            out[(s.backend, revision)] = Counts(prev.requests + delta[0], prev.errors + errors)
        for key in [k for k in self.last if k[0] == lb_host and k not in seen]:
            del self.last[key]  # the server left: its next appearance starts from 0
        return out

    def to_json(self) -> str:
        return json.dumps(
            {
                "last": [[*k, *v] for k, v in sorted(self.last.items())],
                "generation": self.generation,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Meter:
        data = json.loads(text)
        return cls(
            # a state saved before 4xx were kept has 5 fields: its 4xx are unknown (-1)
            last={
                (a, b, c): (int(r), int(e), int(f))
                for a, b, c, r, e, f in ([*row, -1][:6] for row in data["last"])
            },
            generation=dict(data["generation"]),
        )
