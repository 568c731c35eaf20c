"""The records database: aggregates per interval that survive restarts, bounded in age.

``<state_dir>/requests.db`` (SQLite, WAL). Each flush writes the cells it gets at two
resolutions in one transaction: 10 s (``FINE_S``) as they are, and 1 min (``COARSE_S``)
merged into the minute they fall in (the roll-up happens as data arrives, so the
coarse series is always current and a query over weeks never waits for a roll-up job).
Rows older than their resolution's retention (``RecordsRetention``: 24 h and 14 days by
default) are deleted as flushes go, at most once a minute. Histograms are stored in
their compact form (``Histogram.to_bytes``: only the non-empty span) and merged in SQL
by a function the connection registers. The 1 min rows keep no histogram of time to
first byte (empty blob): nothing reads it over weeks, and it was a third of their size.

Tables: ``keys`` (service, revision, action, class -> id), ``cells`` (resolution,
interval start, key -> count, sum of total ms, histograms), ``meta`` (the retention, for
``reconciler.records.query``), ``cursors`` (per LB host, the last request line ingested
from a ring dump by ``reconcile apply``). Errors reading or writing are
``RecordsError`` naming the file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.records.aggregate import Cell, Key
from reconciler.records.histogram import merge_bytes

FILENAME = "requests.db"
FINE_S = 10
COARSE_S = 60
PRUNE_EVERY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
  id INTEGER PRIMARY KEY,
  service TEXT NOT NULL, revision TEXT NOT NULL, action TEXT NOT NULL, class TEXT NOT NULL,
  UNIQUE (service, revision, action, class)
);
CREATE TABLE IF NOT EXISTS cells (
  res INTEGER NOT NULL, t INTEGER NOT NULL, key INTEGER NOT NULL,
  count INTEGER NOT NULL, sum_ms REAL NOT NULL, hist BLOB NOT NULL, ttfb BLOB NOT NULL,
  PRIMARY KEY (res, t, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (lb TEXT PRIMARY KEY, pid INTEGER NOT NULL,
  number INTEGER NOT NULL);
"""

_UPSERT = """
INSERT INTO cells (res, t, key, count, sum_ms, hist, ttfb) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (res, t, key) DO UPDATE SET
  count = count + excluded.count,
  sum_ms = sum_ms + excluded.sum_ms,
  hist = hmerge(hist, excluded.hist),
  ttfb = hmerge(ttfb, excluded.ttfb)
"""


class RecordsError(ReconcilerError):
    """The records database cannot be opened, read or written."""


@dataclass(frozen=True)
class RecordsRetention:
    """How long each resolution is kept (seconds)."""

    fine_s: float = 24 * 3600.0
    coarse_s: float = 14 * 86400.0

    def __post_init__(self) -> None:
        if not (self.fine_s > 0 and self.coarse_s > 0):
            raise ValueError("records retention must be positive")


def connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection with the histogram merge function registered; RecordsError when the
    file cannot be opened."""
    try:
        if read_only:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        conn.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as e:
        raise RecordsError(f"records database {path}: {e}") from None
    conn.create_function("hmerge", 2, merge_bytes, deterministic=True)
    return conn


class RecordsStore:
    """The writer of one records database. Thread-safe (one lock around each call)."""

    def __init__(self, path: Path, retention: RecordsRetention | None = None) -> None:
        self.path = path
        self.retention = retention or RecordsRetention()
        self._lock = threading.Lock()
        self._conn = connect(path)
        self._keys: dict[tuple[str, str, str, str], int] = {}
        self._pruned_at = float("-inf")
        self._set_meta("fine_s", str(self.retention.fine_s))
        self._set_meta("coarse_s", str(self.retention.coarse_s))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _set_meta(self, name: str, value: str) -> None:
        with self._lock:
            self._exec("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def _exec(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, args)
        except sqlite3.Error as e:
            raise RecordsError(f"records database {self.path}: {e}") from None

    def _key_id(self, service: str, revision: str, action: str, cls: str) -> int:
        k = (service, revision, action, cls)
        found = self._keys.get(k)
        if found is None:
            self._exec(
                "INSERT OR IGNORE INTO keys (service, revision, action, class) VALUES (?,?,?,?)",
                k,
            )
            row = self._exec(
                "SELECT id FROM keys WHERE service=? AND revision=? AND action=? AND class=?", k
            ).fetchone()
            found = self._keys[k] = int(row[0])
        return found

    def write(self, cells: Mapping[Key, Cell], now: float | None = None) -> None:
        """Add ``cells`` (10 s intervals) at both resolutions in one transaction, then
        prune when due. ``now``: the clock for pruning (the time of day by default)."""
        now = time.time() if now is None else now
        if not cells:
            self.prune(now)
            return
        coarse: dict[Key, Cell] = {}
        for (t, service, revision, action, cls), cell in cells.items():
            ck = (t - t % COARSE_S, service, revision, action, cls)
            into = coarse.get(ck)
            if into is None:
                into = coarse[ck] = Cell()
            into.merge(cell)
        with self._lock:
            try:
                self._exec("BEGIN IMMEDIATE")
                rows = [self._row(FINE_S, k, c, c.ttfb.to_bytes()) for k, c in cells.items()]
                rows += [self._row(COARSE_S, k, c, b"") for k, c in coarse.items()]
                self._conn.executemany(_UPSERT, rows)
                self._exec("COMMIT")
            except (sqlite3.Error, RecordsError) as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise RecordsError(f"records database {self.path}: {e}") from None
        self.prune(now)

    def _row(self, res: int, k: Key, c: Cell, ttfb: bytes) -> tuple[object, ...]:
        t, service, revision, action, cls = k
        return (
            res,
            t,
            self._key_id(service, revision, action, cls),
            c.count,
            c.sum_ms,
            c.total.to_bytes(),
            ttfb,
        )

    def prune(self, now: float, force: bool = False) -> int:
        """Delete rows older than their retention (at most once a minute unless
        ``force``); how many were deleted."""
        if not force and now - self._pruned_at < PRUNE_EVERY_S:
            return 0
        self._pruned_at = now
        r = self.retention
        with self._lock:
            n = self._exec(
                "DELETE FROM cells WHERE res = ? AND t < ?", (FINE_S, now - r.fine_s)
            ).rowcount
            n += self._exec(
                "DELETE FROM cells WHERE res = ? AND t < ?", (COARSE_S, now - r.coarse_s)
            ).rowcount
        return int(n)

    # ---------------------------------------------------------------- ring cursors

    def cursor(self, lb: str) -> tuple[int, int] | None:
        """(pid, request number) of the last line ingested from ``lb``'s ring dump."""
        with self._lock:
            row = self._exec("SELECT pid, number FROM cursors WHERE lb = ?", (lb,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def set_cursor(self, lb: str, pid: int, number: int) -> None:
        with self._lock:
            self._exec(
                "INSERT OR REPLACE INTO cursors (lb, pid, number) VALUES (?, ?, ?)",
                (lb, pid, number),
            )

    def checkpoint(self) -> None:
        """Fold the WAL into the database file (before measuring its size)."""
        with self._lock:
            self._exec("PRAGMA wal_checkpoint(TRUNCATE)")
