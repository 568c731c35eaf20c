"""Steady HTTP load with `hey`, for measuring what clients see during a switch.

`HeyLoad` runs one `hey` process against a loopback URL at a fixed rate (``-c`` workers of
``-q`` requests/s each) until it is stopped. It always stops by itself: ``-z`` caps its run
time, so a test that dies without reaching ``stop()`` leaves nothing behind for long; the
context manager also kills it on the way out. ``stop()`` sends SIGINT, on which hey stops
its workers, lets the requests in flight finish and prints its summary; the summary's
"Status code distribution" and "Error distribution" are parsed into a `HeyReport`.

Failed requests are counted, not assumed: every request hey sent is either a status code
or an error line of the report.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

_TOTAL = re.compile(r"^\s*Total:\s+([\d.]+) secs", re.M)
_SLOWEST = re.compile(r"^\s*Slowest:\s+([\d.]+) secs", re.M)
_P99 = re.compile(r"^\s*99% in ([\d.]+) secs", re.M)
_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.M)
_ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.*)$")


@dataclass(frozen=True)
class HeyReport:
    duration_s: float  # hey's own "Total" (first request to the end)
    statuses: dict[int, int]  # status code -> responses
    errors: dict[str, int] = field(default_factory=dict)  # error text -> count
    slowest_s: float = 0.0  # of the answered requests
    p99_s: float = 0.0
    raw: str = ""

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        """Requests that got no HTTP response at all (refused, reset, EOF, timeout)."""
        return sum(self.errors.values())

    @property
    def requests(self) -> int:
        return self.responses + self.failed

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    @property
    def rate(self) -> float:
        """Requests per second achieved over the whole run (failed ones included)."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> str:
        errors = "".join(f"\n    {n:6d}  {text}" for text, n in sorted(self.errors.items()))
        return (
            f"requests={self.requests} in {self.duration_s:.1f}s "
            f"rate={self.rate:.0f}/s statuses={dict(sorted(self.statuses.items()))} "
            f"non-2xx={self.non_2xx} errors={self.failed} "
            f"p99={self.p99_s * 1000:.1f}ms slowest={self.slowest_s * 1000:.1f}ms{errors}"
        )


def parse_hey(text: str) -> HeyReport:
    """Parse hey's default (summary) output. Raises ValueError when it has no summary."""
    total = _TOTAL.search(text)
    if total is None:
        raise ValueError(f"no 'Total:' line in hey's output:\n{text}")
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("Status code distribution:"):
            section = "status"
            continue
        if line.startswith("Error distribution:"):
            section = "error"
            continue
        if line and not line[0].isspace():
            section = ""
            continue
        if section == "status" and (m := _STATUS.match(line)):
            statuses[int(m.group(1))] = statuses.get(int(m.group(1)), 0) + int(m.group(2))
        elif section == "error" and (m := _ERROR.match(line)):
            errors[m.group(2).strip()] = errors.get(m.group(2).strip(), 0) + int(m.group(1))
    slowest, p99 = _SLOWEST.search(text), _P99.search(text)
    return HeyReport(
        float(total.group(1)),
        statuses,
        errors,
        slowest_s=float(slowest.group(1)) if slowest else 0.0,
        p99_s=float(p99.group(1)) if p99 else 0.0,
        raw=text,
    )


class HeyLoad:
    """One running `hey`: ``concurrency`` workers, ``qps`` requests/s each, keep-alive
    (or a fresh connection per request with ``keepalive=False``: a listener that refuses
    connections for a moment shows only then)."""

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 10,
        qps: int = 80,
        max_duration_s: int = 120,
        request_timeout_s: int = 10,
        keepalive: bool = True,
    ) -> None:
        host = urllib.parse.urlsplit(url).hostname or ""
        # Load only ever goes to an HAProxy under test: on loopback, or on a simulated
        # host of hosts_support (a network namespace the tests made themselves).
        if host != "127.0.0.1" and not host.startswith("10.213."):
            raise ValueError(f"refusing to load {url}: only 127.0.0.1 and 10.213.x.x")
        binary = shutil.which("hey")
        if binary is None:
            raise RuntimeError("hey is not installed (Debian package 'hey')")
        self.url = url
        self.target_rate = concurrency * qps
        self.max_duration_s = max_duration_s
        self.cmd = [
            binary,
            "-z", f"{max_duration_s}s",
            "-c", str(concurrency),
            "-q", str(qps),
            "-t", str(request_timeout_s),
            *([] if keepalive else ["-disable-keepalive"]),
            url,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.stopped_by_us = False

    def __enter__(self) -> HeyLoad:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.started_at = time.monotonic()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> HeyReport:
        """Stop the load (SIGINT: in-flight requests finish) and return hey's report.

        ``stopped_by_us`` is False when hey had already ended on its ``-z`` cap, i.e.
        the load did not cover everything up to this call."""
        assert self.proc is not None, "hey was not started"
        if self.proc.poll() is None:
            self.stopped_by_us = True
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"hey did not stop within {timeout}s of SIGINT") from None
        if self.proc.returncode != 0:
            raise AssertionError(f"hey exited {self.proc.returncode}:\n{out}")
        return parse_hey(out)

    def kill(self) -> None:
        """Kill hey if it still runs (a failing test must not leave load behind)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# --------------------------------------------------------------------------- HAProxy's own view

# What HAProxy hides from clients: a request whose first server failed (connection refused,
# closed without an answer) is retried (``retries 3``, ``retry-on conn-failure
# empty-response``) and redispatched (``option redispatch``) to another server, so the
# client still gets a 200. Only these counters show it.
HIDDEN_FAILURES = ("wretr", "wredis", "econ", "eresp")

# What a server was sent and answered: sessions (one per request in HTTP mode) and its
# responses by class. A server that never got a request has 0 in all of them.
TRAFFIC = ("total_sessions", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx",
           "hrsp_other")


class HAProxyCounters:
    """Polls ``show stat`` of every HAProxy worker, current and old (through the master
    CLI, ``@!PID show stat``), in a thread, so that a reload (a new worker counts from 0;
    the old one goes on serving its connections for a while) loses nothing: the count
    of a server is the sum over workers of (last value seen - value when first seen, or
    0 for a worker born after the start). A worker that exits between two polls loses
    at most one poll interval of counts.

    ``fields``: the ServerStats counters followed (default: the hidden failures; TRAFFIC
    for what each server was sent). A server added and deleted between two polls is
    never seen: keep ``interval_s`` well below the time a server can live in HAProxy."""

    def __init__(self, haproxy: Any, interval_s: float = 0.05,
                 fields: tuple[str, ...] = HIDDEN_FAILURES) -> None:
        self.haproxy = haproxy
        self.interval_s = interval_s
        self.fields = fields
        self.base: dict[tuple[int, str, str], dict[str, int]] = {}
        self.last: dict[tuple[int, str, str], dict[str, int]] = {}
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    def poll(self) -> None:
        from reconciler.lb.haproxy.stats import parse_stat_csv

        try:
            procs = self.haproxy.procs()
        except Exception as exc:  # the master re-executes itself on a reload
            self.errors.append(f"show proc: {exc}")
            return
        for pid in (*procs.current_pids, *procs.old_pids):
            try:
                stats = parse_stat_csv(self.haproxy.master.command(f"@!{pid} show stat"))
            except Exception as exc:  # an old worker may leave between the two commands
                self.errors.append(f"@!{pid} show stat: {exc}")
                continue
            with self.lock:
                for s in stats:
                    key = (pid, s.backend, s.server)
                    values = {name: int(getattr(s, name)) for name in self.fields}
                    if key not in self.base:
                        # a worker seen at the start counts from its values then; one born
                        # later (a reload) or a server added later counts from 0
                        self.base[key] = values if not self._started else dict.fromkeys(
                            self.fields, 0)
                    self.last[key] = values
        self.polls += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def __enter__(self) -> HAProxyCounters:
        self.poll()
        assert self.polls == 1, f"cannot read HAProxy's counters: {self.errors}"
        self._started = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.poll()

    def totals(self, backend: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
        """(backend, server) -> counter -> count since the start, over every worker."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        with self.lock:
            for (pid, be, srv), values in self.last.items():
                if backend is not None and be != backend:
                    continue
                acc = out.setdefault((be, srv), dict.fromkeys(self.fields, 0))
                base = self.base[(pid, be, srv)]
                for name in self.fields:
                    # a counter below its base: that worker's server was deleted and
                    # added again under the same name; count from 0
                    acc[name] += values[name] - base[name] if values[name] >= base[name] \
                        else values[name]
        return out

    @staticmethod
    def nonzero(totals: dict[tuple[str, str], dict[str, int]]) -> dict[str, dict[str, int]]:
        return {f"{be}/{srv}": {k: v for k, v in c.items() if v}
                for (be, srv), c in sorted(totals.items()) if any(c.values())}

    @staticmethod
    def minus(after: dict[tuple[str, str], dict[str, int]],
              before: dict[tuple[str, str], dict[str, int]]
              ) -> dict[tuple[str, str], dict[str, int]]:
        return {key: {k: v - before.get(key, {}).get(k, 0) for k, v in c.items()}
                for key, c in after.items()}
