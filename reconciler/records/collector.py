"""Request records while ``reconcile watch`` runs: a stream per LB host, aggregated and
flushed to the records database every interval, and handed to a sink (Prometheus).

``Records`` is the hub. The watch loop calls ``follow`` after every pass with the
environment's desired and observed state and how to reach each LB host's stats socket
(``LBTarget``); the hub keeps one ``Follower`` thread per LB host whose load balancer
logs requests (``request_records`` true) and stops the others. A follower holds a
``show events reqlog -wn`` connection (``reconciler.lb.haproxy.events``), wakes every
``BATCH_S`` to take everything buffered, parses it in one go and passes the rows to
``ingest``, which names them through the latest mapping (``aggregate.origins``,
``ActionTable`` per service, behind ``batch.Namer``'s caches) and adds their cells to
the aggregator (``reconciler.records.batch``: no object per request). A flusher thread
writes the aggregator's cells to the store every ``interval_s`` (one transaction);
``stop`` flushes what is left.

Reconnecting: on EOF or an error the follower waits (exponential backoff, at most
``MAX_BACKOFF_S``) and reconnects without ``-n``, so lines the ring took meanwhile are
read; lines already counted are skipped by their (pid, request number) (``SeenIds``,
exact, unlike a highest-number cursor: requests finish out of order). After a reload
the old worker writes its proxies' soft-stop notices into the ring, or the observed
worker pid changes: the follower reads what the old worker still writes for
``DRAIN_S`` and closes the connection (an open one would keep the old worker alive) and
reconnects to the new worker. Requests a worker logs after that are not recorded.

Nothing here raises into the caller's loop: failures are logged and retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.errors import ReconcilerError
from reconciler.lb.haproxy.events import EventStream, stopped_notice
from reconciler.lb.haproxy.requestlog import ID, RING, Row, parse_rows
from reconciler.model import DesiredState, ObservedState
from reconciler.records.actions import ActionTable
from reconciler.records.aggregate import (
    INTERVAL_S,
    Aggregator,
    Cell,
    Key,
    Origins,
    action_tables,
    origins,
)
from reconciler.records.batch import Namer, SeenIds, aggregate_rows
from reconciler.records.store import RecordsStore
from reconciler.transport.base import Transport

log = logging.getLogger("reconciler.records")

MAX_BACKOFF_S = 10.0
DRAIN_S = 1.0
READ_TIMEOUT_S = 0.5
# How often a follower takes what its stream buffered: one parse and one aggregation per
# batch instead of per few lines (the per-batch work, not per-request, is what it saves).
# After a read of FULL_READ bytes or more it reads again at once: the socket's buffer
# may be full, and while it is HAProxy cannot write and the ring overwrites lines unread.
BATCH_S = 0.25
FULL_READ = 128 * 1024

# Receives the cells of each batch (10 s intervals), e.g. Prometheus' counters; called
# under the hub's lock, and must neither keep nor change them (the aggregator takes them).
Sink = Callable[[Mapping[Key, Cell]], None]


@dataclass(frozen=True)
class LBTarget:
    """How to reach one LB host's request log, as the last pass saw it."""

    host: str
    transport: Transport
    socket: str  # the stats socket's path on that host
    enabled: bool  # the LoadBalancer's request_records
    worker_pid: int = 0  # the current worker (0: unknown)


class Records:
    """The hub (see the module doc). Thread-safe."""

    def __init__(
        self, store: RecordsStore, sink: Sink | None = None, interval_s: float = INTERVAL_S
    ) -> None:
        self.store = store
        self.sink = sink
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._agg = Aggregator()
        self._tables: dict[str, ActionTable] = {}
        self._namer = Namer(Origins(), self._tables)
        self._followers: dict[str, Follower] = {}
        self._stop = threading.Event()
        self.ingested = 0  # requests recorded since start (for tests and benchmarks)
        self._flusher = threading.Thread(target=self._flush_loop, name="records-flush", daemon=True)
        self._flusher.start()

    def follow(
        self, desired: DesiredState, observed: ObservedState, targets: Mapping[str, LBTarget]
    ) -> None:
        """Take the mapping of this pass and follow exactly the enabled ``targets``."""
        where = origins(observed, desired)
        with self._lock:
            self._tables = action_tables(desired, self._tables)
            self._namer = Namer(where, self._tables)
        for host in list(self._followers):
            t = targets.get(host)
            if t is None or not t.enabled:
                self._followers.pop(host).stop()
        for host, t in targets.items():
            if not t.enabled or self._stop.is_set():
                continue
            follower = self._followers.get(host)
            if follower is None:
                follower = self._followers[host] = Follower(t, self.ingest)
                follower.start()
            else:
                follower.retarget(t)

    def ingest(self, rows: Sequence[Row]) -> int:
        """Record ``rows`` (``parse_rows``, deduped by the caller); how many belonged
        to the environment."""
        with self._lock:
            cells, n = aggregate_rows(rows, self._namer, self._agg.interval_s)
            if cells and self.sink is not None:
                try:  # before the aggregator takes the cells over
                    self.sink(cells)
                except Exception:  # the metrics must not stop the records
                    log.exception("records sink failed")
            self._agg.merge(cells)
            self.ingested += n
        return n

    def flush(self) -> None:
        """Write what was aggregated since the last flush (errors logged, cells kept
        for the next flush)."""
        with self._lock:
            cells = self._agg.take()
        try:
            self.store.write(cells)
        except ReconcilerError as exc:
            log.warning("request records not written (kept for the next flush): %s", exc)
            with self._lock:
                self._agg.merge(cells)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def hosts(self) -> list[str]:
        """LB hosts followed now."""
        return sorted(self._followers)

    def stop(self) -> None:
        """Stop every follower and the flusher; flush what is left. Idempotent."""
        self._stop.set()
        for f in self._followers.values():
            f.stop()
        for f in self._followers.values():
            f.join(timeout=5)
        self._followers.clear()
        self._flusher.join(timeout=5)
        self.flush()


class Follower(threading.Thread):
    """The stream of one LB host (see the module doc)."""

    def __init__(self, target: LBTarget, ingest: Callable[[Sequence[Row]], int]) -> None:
        super().__init__(name=f"records-{target.host}", daemon=True)
        self.target = target
        self._ingest = ingest
        self._halt = threading.Event()
        self.recent = SeenIds()
        self.connects = 0

    def retarget(self, target: LBTarget) -> None:
        self.target = target  # one reference assignment: atomic for the reader

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        failures = 0
        while not self._halt.is_set():
            try:
                self._session(new_only=self.connects == 0)
                failures = 0
            except (ReconcilerError, OSError) as exc:
                failures += 1
                log.info("request log of %s: %s", self.target.host, exc)
            except Exception:  # never let the thread die silently
                failures += 1
                log.exception("request log of %s failed", self.target.host)
            if failures:
                self._halt.wait(min(MAX_BACKOFF_S, 0.25 * 2**failures))

    def _session(self, new_only: bool) -> None:
        """One connection, read until it ends, the worker changes or ``stop``."""
        t = self.target
        stream = EventStream.open(t.transport, t.socket, RING, new_only)
        self.connects += 1
        drain_until: float | None = None
        pid = 0
        try:
            pause = BATCH_S
            while not self._halt.wait(pause):
                text = stream.read(READ_TIMEOUT_S)
                if text is None:
                    return
                pause = 0 if len(text) >= FULL_READ else BATCH_S
                if text:
                    rows = parse_rows(text)
                    if rows:
                        pid = int(rows[-1][ID].partition(".")[0])
                        self._ingest(self.recent.fresh(rows))
                    if drain_until is None and stopped_notice(text):
                        drain_until = time.monotonic() + DRAIN_S
                current = self.target.worker_pid
                if drain_until is None and pid and current and current != pid:
                    drain_until = time.monotonic() + DRAIN_S
                if drain_until is not None and time.monotonic() >= drain_until:
                    return
                if self.target is not t and self.target.socket != t.socket:
                    return  # the socket moved: connect to the new one
        finally:
            stream.close()
