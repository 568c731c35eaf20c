"""The collector's hot path: a chunk of request lines to cells, with no object per request.

``parse_rows`` turns a whole chunk of ring lines into tuples of strings with one regex
``findall`` (C speed). ``SeenIds.fresh`` drops the rows already counted (exact, by
"pid.number"), with set operations on the whole batch; only a batch that repeats an id
(after a reconnect re-reads the ring) is filtered row by row. ``aggregate_rows`` counts
the identical rows of a batch with ``collections.Counter`` (C speed: the same latency,
path and second repeat a lot), then handles each distinct row once: its name (service,
revision, action, status class) comes from ``Namer``'s caches, its times from a bucket
lookup table. The cells it returns equal what ``aggregate.to_record`` +
``aggregate.aggregate`` give for the same requests (the unit tests hold them to it),
including the order in which new actions are admitted (a ``Counter`` keeps first
occurrences in order).

Not thread-safe: the collector locks around a ``Namer`` and owns a ``SeenIds`` per
stream.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from operator import add, itemgetter
from typing import Any

from reconciler.lb.haproxy.requestlog import ID, NO_SERVER_NAME, Row
from reconciler.records.actions import ActionTable
from reconciler.records.aggregate import NO_SERVER, Cell, Key, Origins, status_class
from reconciler.records.histogram import BOUNDS, SIZE, Histogram, bucket_of

Name = tuple[str, str, str, str]  # (service, revision, action, status class)
NOT_OURS: Name = ("", "", "", "")  # cached for a request of no service of the environment
CACHE_LIMIT = 50_000  # distinct keys a cache holds before it starts again (paths vary)
RECENT = 200_000  # ids remembered for dedupe: more than the ring (8 MiB) holds

_LAST_MS = int(BOUNDS[-1])


def bucket_table(last_ms: int) -> tuple[int, ...]:
    """``bucket_of(ms)`` of every whole ``ms`` from 0 to ``last_ms``, built run by run
    (bucket i holds the whole numbers in (BOUNDS[i-1], BOUNDS[i]]): a few ms, where
    65,537 bisections took about 0.1 s of every process start."""
    out = [0]  # 0 ms (and nothing below)
    ms = 1
    for i, bound in enumerate(BOUNDS):
        hi = min(math.floor(bound), last_ms)
        if hi >= ms:
            out.extend([i] * (hi - ms + 1))
            ms = hi + 1
    out.extend([bucket_of(m) for m in range(ms, last_ms + 1)])  # past the last bound
    return tuple(out)


# The bucket of every whole number of ms up to the last bound (bucket_of, precomputed).
_BUCKET: tuple[int, ...] = bucket_table(_LAST_MS)
_OVERFLOW = SIZE - 1
# The columns counted per batch: all but the bytes and the id.
_COUNTED = itemgetter(0, 1, 2, 3, 4, 6, 8, 9)
_IDS = itemgetter(ID)


class SeenIds:
    """At least the last ``capacity`` request ids ("pid.number") seen, remembered per
    batch: ``fresh`` keeps the rows not among them (nor earlier in the same batch)."""

    def __init__(self, capacity: int = RECENT) -> None:
        self.capacity = capacity
        self._set: set[str] = set()
        self._batches: deque[list[str]] = deque()
        self._held = 0

    def fresh(self, rows: Sequence[Row]) -> Sequence[Row]:
        ids = list(map(_IDS, rows))
        new = set(ids)
        if len(new) == len(ids) and new.isdisjoint(self._set):
            self._set |= new
            out: Sequence[Row] = rows
        else:  # a re-read ring: row by row, in order
            kept, seen, add = [], self._set, self._set.add
            for rid, row in zip(ids, rows, strict=True):
                if rid not in seen:
                    add(rid)
                    kept.append(row)
            ids = [row[ID] for row in kept]
            out = kept
        self._batches.append(ids)
        self._held += len(ids)
        while len(self._batches) > 1 and self._held - len(self._batches[0]) >= self.capacity:
            old = self._batches.popleft()
            self._held -= len(old)
            self._set.difference_update(old)
        return out


class Namer:
    """(backend, server, status, method, path) -> ``Name``, or ``NOT_OURS`` for a request
    that is not the environment's; cached (see the module doc). One per mapping: the collector
    makes a new one when a pass gives it new ``Origins`` or action tables."""

    def __init__(self, where: Origins, tables: Mapping[str, ActionTable]) -> None:
        self.where = where
        self.tables = tables
        self.names: dict[tuple[str, str, str, str, str], Name] = {}
        self._actions: dict[tuple[str, str, str], str] = {}

    def resolve(self, be: str, srv: str, st: str, method: str, path: str) -> Name:
        """The name of a row's request (the slow path: on a cache miss)."""
        names = self.names
        if len(names) >= CACHE_LIMIT:
            names.clear()
        key = (be, srv, st, method, path)
        name = names[key] = self._name(be, srv, int(st), method, path)
        return name

    def _name(self, be: str, srv: str, status: int, method: str, path: str) -> Name:
        service = self.where.services.get(be)
        if service is None:
            return NOT_OURS
        if srv == NO_SERVER_NAME:
            revision = NO_SERVER
        else:
            found = self.where.servers.get((be, srv))
            if found is None:
                return NOT_OURS
            revision = found.revision
        return (service, revision, self._action(service, method, path), status_class(status, srv))

    def _action(self, service: str, method: str, path: str) -> str:
        # ActionTable.name is stable for a given request once answered (admitted names
        # stay, a refused one stays refused while the table lives): safe to cache.
        actions = self._actions
        key = (service, method, path)
        action = actions.get(key)
        if action is None:
            if len(actions) >= CACHE_LIMIT:
                actions.clear()
            table = self.tables.get(service)
            action = actions[key] = table.name(method, path) if table is not None else "other"
        return action


_Acc = list[Any]  # [count, sum of total ms, total-time bucket counts, TTFB bucket counts]


def aggregate_rows(
    rows: Iterable[Row], namer: Namer, interval_s: int
) -> tuple[dict[Key, Cell], int]:
    """The cells of ``rows`` per interval and key (as ``aggregate.aggregate`` counts
    them), and how many rows were the environment's."""
    names, resolve = namer.names, namer.resolve
    accs: dict[tuple[str, Name], _Acc] = {}  # per second the requests arrived
    recorded = 0
    for (be, srv, st, tr, ta, ts, method, path), n in Counter(map(_COUNTED, rows)).items():
        name = names.get((be, srv, st, method, path))
        if name is None:
            name = resolve(be, srv, st, method, path)
        if name is NOT_OURS:
            continue
        recorded += n
        acc = accs.get((ts, name))
        if acc is None:
            acc = accs[(ts, name)] = [0, 0, [0] * SIZE, [0] * SIZE]
        acc[0] += n
        total = int(ta)
        if total > 0:
            acc[1] += total * n
            acc[2][_BUCKET[total] if total <= _LAST_MS else _OVERFLOW] += n
        else:
            acc[2][0] += n
        ttfb = int(tr)
        if ttfb >= 0:
            acc[3][_BUCKET[ttfb] if ttfb <= _LAST_MS else _OVERFLOW] += n
    return _by_interval(accs, interval_s), recorded


def _by_interval(accs: Mapping[tuple[str, Name], _Acc], interval_s: int) -> dict[Key, Cell]:
    cells: dict[Key, Cell] = {}
    for (ts, (service, revision, action, cls)), (count, sum_ms, total, ttfb) in accs.items():
        t = int(ts)
        key = (t - t % interval_s, service, revision, action, cls)
        into = cells.get(key)
        if into is None:  # the lists are this function's own: no copy
            cells[key] = Cell(count, float(sum_ms), Histogram(total, own=True),
                              Histogram(ttfb, own=True))
        else:
            into.count += count
            into.sum_ms += sum_ms
            into.total.counts = list(map(add, into.total.counts, total))
            into.ttfb.counts = list(map(add, into.ttfb.counts, ttfb))
    return cells
