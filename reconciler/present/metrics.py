"""Prometheus metrics of `reconcile watch` and its HTTP endpoint (/metrics, /healthz).

One registry per watcher (not the global default), so tests can run several. The HTTP
server runs in a daemon thread; /healthz answers 200 while the loop is alive and has
passed recently, 503 otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import compress
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from reconciler.records.aggregate import Cell, Key
from reconciler.records.histogram import BOUNDS, PER_DOUBLING, PROMETHEUS_BUCKETS_S, SIZE

# The Prometheus bucket (index into PROMETHEUS_BUCKETS_S + [+Inf]) of each bucket of the
# records' histograms: every PER_DOUBLING-th bound of theirs is one of Prometheus'.
_PROMETHEUS_BUCKET = tuple(
    -(-i // PER_DOUBLING) if i < len(BOUNDS) else len(PROMETHEUS_BUCKETS_S) for i in range(SIZE)
)


class CountsHistogram(Histogram):
    """A Prometheus histogram that also takes many observations at once, as counts per
    bucket of a records histogram (``add_counts``): the same numbers ``observe`` would
    give for each request (``tests/unit/test_records_batch.py`` holds it to that)."""

    def add_counts(self, counts: Sequence[int], sum_s: float) -> None:
        """Add a records histogram's ``counts`` (``SIZE`` buckets) and their sum (to a
        labelled child)."""
        self._sum.inc(sum_s)
        buckets, where = self._buckets, _PROMETHEUS_BUCKET
        for i in compress(range(len(counts)), counts):  # the non-empty ones, at C speed
            buckets[where[i]].inc(counts[i])


class Metrics:
    """The watcher's metrics, in a registry of their own (``docs/operations.md`` lists
    them; ``tests/unit/test_metrics_doc.py`` keeps the two the same)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._pass_metrics(self.registry)
        self._state_metrics(self.registry)
        self._request_metrics(self.registry)
        self._canary_metrics(self.registry)
        self.last_loop = time.monotonic()

    def _pass_metrics(self, r: CollectorRegistry) -> None:
        """What passes do: their duration and outcome, failures, drift, mismatches, reloads."""
        self.pass_duration = Histogram(
            "reconcile_pass_duration_seconds",
            "Duration of reconcile passes.",
            ["kind"],
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.passes = Counter(
            "reconcile_passes_total", "Passes by outcome.", ["outcome"], registry=r
        )
        self.failures = Counter(
            "reconcile_failures_total", "Failures by kind.", ["kind"], registry=r
        )
        self.drift = Counter(
            "reconcile_drift_detected_total",
            "Passes that found live state differing from git.",
            registry=r,
        )
        self.drift_pending = Gauge(
            "reconcile_drift_pending", "1 while detected drift is not repaired.", registry=r
        )
        self.mismatches = Gauge(
            "reconcile_outcome_mismatches",
            "Differences between the world and the plan's promise found at the end of the "
            "last pass (0: the outcome was verified).",
            registry=r,
        )
        self.reloads = Counter(
            "reconcile_haproxy_reloads_total", "HAProxy reloads done.", registry=r
        )

    def _state_metrics(self, r: CollectorRegistry) -> None:
        """Where things stand: the last applied and seen commits, the source, the
        desired weights and the healthy containers."""
        self.applied = Gauge(
            "reconcile_last_applied_commit_info",
            "The last commit applied (value 1).",
            ["commit"],
            registry=r,
        )
        self.applied_at = Gauge(
            "reconcile_last_applied_timestamp_seconds",
            "When the last commit was applied.",
            registry=r,
        )
        self.seen_at = Gauge(
            "reconcile_last_seen_commit_timestamp_seconds",
            "When the source was last read successfully.",
            registry=r,
        )
        self.source_up = Gauge("reconcile_source_up", "1 when the repository answers.", registry=r)
        self.leading = Gauge(
            "reconcile_leading",
            "1 while this watcher may act on its environment (etcd mode: while it leads).",
            registry=r,
        )
        self.release_weight = Gauge(
            "reconcile_release_weight_percent",
            "Weight of each release as declared in git at the last loaded commit (a canary "
            "shows its declared 0; the weight of its current step is in reconcile status).",
            ["service", "revision"],
            registry=r,
        )
        self.healthy = Gauge(
            "reconcile_service_healthy_containers",
            "Running, healthy containers of each service.",
            ["service"],
            registry=r,
        )

    def _request_metrics(self, r: CollectorRegistry) -> None:
        """Requests HAProxy answered (request records), fed by the records collector."""
        self.requests = Counter(
            "reconcile_requests",
            "Requests answered, by service, revision, action and status class.",
            ["service", "revision", "action", "code_class"],
            registry=r,
        )
        self.request_duration = CountsHistogram(
            "reconcile_request_duration_seconds",
            "Total time of requests (what the client waited).",
            ["service", "revision", "action"],
            registry=r,
            buckets=PROMETHEUS_BUCKETS_S,
        )
        self._durations: dict[tuple[str, str, str], CountsHistogram] = {}
        self._counters: dict[tuple[str, str, str, str], Counter] = {}

    def observe_cells(self, cells: Mapping[Key, Cell]) -> None:
        """Count a batch of the records collector's cells (its sink; they are read, not
        kept): one increment and one histogram update per cell (label children cached)."""
        durations, counters = self._durations, self._counters
        for (_t, service, revision, action, cls), cell in cells.items():
            key = (service, revision, action, cls)
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = self.requests.labels(*key)
            counter.inc(cell.count)
            dkey = (service, revision, action)
            child = durations.get(dkey)
            if child is None:
                child = durations[dkey] = self.request_duration.labels(*dkey)
            child.add_counts(cell.total.counts, cell.sum_ms / 1000)

    def _canary_metrics(self, r: CollectorRegistry) -> None:
        """Where each running canary stands (set after every pass and look)."""
        self.canary_info = Gauge(
            "reconcile_canary_info",
            "A canary's analysis (value 1): its baseline and canary revisions and status.",
            ["service", "baseline", "canary", "status"],
            registry=r,
        )
        self.canary_step = Gauge(
            "reconcile_canary_step", "The canary's current step (1-based).", ["service"],
            registry=r,
        )
        self.canary_evidence = Gauge(
            "reconcile_canary_evidence",
            "Evidence that the canary is worse than its baseline (aborted at 1/(1-confidence)).",
            ["service"],
            registry=r,
        )
        self.canary_weight = Gauge(
            "reconcile_canary_weight_percent",
            "Weight of each release of a service with a canary, as the analysis set it now.",
            ["service", "revision"],
            registry=r,
        )

    def set_applied(self, commit: str) -> None:
        self.applied.clear()
        self.applied.labels(commit=commit).set(1)
        self.applied_at.set(time.time())

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


def serve(metrics: Metrics, address: str, stale_after_s: float) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on ``address`` ("host:port") in a daemon thread."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the http.server API names it so
            if self.path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                age = time.monotonic() - metrics.last_loop
                ok = age < stale_after_s
                self._send(
                    200 if ok else 503,
                    f"{'ok' if ok else 'stale'} {age:.0f}s\n".encode(),
                    "text/plain",
                )
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scrapes are not news
            pass

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server
