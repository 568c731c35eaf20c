"""Requests of one revision, summed from HAProxy's per-server counters (``status``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.model import ServerStats


@dataclass
class RevisionTraffic:
    requests: int = 0
    r2xx: int = 0
    r4xx: int = 0
    r5xx: int = 0
    errors: int = 0  # eresp + econ: HAProxy's own failures towards the servers
    _rtime_weighted: float = 0.0

    def add(self, s: ServerStats) -> None:
        n = s.hrsp_1xx + s.hrsp_2xx + s.hrsp_3xx + s.hrsp_4xx + s.hrsp_5xx + s.hrsp_other
        self.requests += n
        self.r2xx += s.hrsp_2xx
        self.r4xx += s.hrsp_4xx
        self.r5xx += s.hrsp_5xx
        self.errors += s.eresp + s.econ
        self._rtime_weighted += s.rtime_ms * n

    @property
    def avg_ms(self) -> float:
        return self._rtime_weighted / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "2xx": self.r2xx,
            "4xx": self.r4xx,
            "5xx": self.r5xx,
            "errors": self.errors,
            "avg_response_ms": round(self.avg_ms, 1),
        }
