"""Reading the records database (``reconciler.records.store``) for pages and commands.

The two functions here are the contract the status page codes against (issue 12):
``series`` (per revision over time) and ``action_table`` (per action and revision over a
span). Times are Unix seconds; latencies are total times (what a client waited) in ms,
quantiles from the merged histograms (within one bucket of the truth). Error ratios:
``err_4xx`` counts 4xx, ``err_5xx`` counts 5xx and "err" (no valid status). Requests no
server answered (revision "-") belong to no revision and are left out of both. A missing
database reads as empty. Errors reading it are ``RecordsError``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.records.aggregate import ERROR_CLASSES, NO_SERVER
from reconciler.records.histogram import Histogram
from reconciler.records.store import COARSE_S, FINE_S, RecordsError, RecordsRetention, connect

MAX_FINE_SPAN_S = 6 * 3600  # a longer span reads the 1 min rows (fewer points to draw)
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


@contextmanager
def _reading(db: Path) -> Iterator[sqlite3.Connection | None]:
    if not db.exists():
        yield None
        return
    conn = connect(db, read_only=True)
    try:
        yield conn
    except sqlite3.Error as e:
        raise RecordsError(f"records database {db}: {e}") from None
    finally:
        conn.close()


def _fine_retention(conn: sqlite3.Connection) -> float:
    row = conn.execute("SELECT value FROM meta WHERE name = 'fine_s'").fetchone()
    return float(row[0]) if row else RecordsRetention().fine_s


def resolution(conn: sqlite3.Connection, since: float, until: float, now: float) -> int:
    """10 s when the span is short and still within the fine rows' retention, else 60 s."""
    fine = since >= now - _fine_retention(conn) and until - since <= MAX_FINE_SPAN_S
    return FINE_S if fine else COARSE_S


def _rows(
    conn: sqlite3.Connection, service: str, res: int, since: float, until: float
) -> list[tuple[int, str, str, str, int, bytes]]:
    """(interval start, revision, action, class, count, histogram) of ``service``."""
    start = int(since) - int(since) % res
    return conn.execute(
        "SELECT c.t, k.revision, k.action, k.class, c.count, c.hist FROM cells c "
        "JOIN keys k ON k.id = c.key "
        "WHERE c.res = ? AND c.t >= ? AND c.t <= ? AND k.service = ? AND k.revision != ?",
        (res, start, int(until), service, NO_SERVER),
    ).fetchall()


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _q(h: Histogram, q: float) -> float | None:
    v = h.quantile(q)
    return None if v is None else round(v, 3)


def series(db: Path, service: str, since: float, until: float) -> dict[str, Any]:
    """``{"resolution_s", "revisions": {rev: {"t", "rate", "err_4xx", "err_5xx", "p50",
    "p95", "p99"}}}``: one point per interval from the one holding ``since`` to the one
    holding ``until``, for every revision with a request in the span (an interval
    without requests has rate 0 and None elsewhere)."""
    with _reading(db) as conn:
        if conn is None:
            return {"resolution_s": FINE_S, "revisions": {}}
        res = resolution(conn, since, until, time.time())
        rows = _rows(conn, service, res, since, until)
    first = int(since) - int(since) % res
    starts = list(range(first, int(until) + 1, res))
    index = {t: i for i, t in enumerate(starts)}
    per: dict[str, list[tuple[int, int, int, Histogram]]] = {}
    for t, rev, _action, cls, count, blob in rows:
        i = index.get(t)
        if i is None:
            continue
        cells = per.get(rev)
        if cells is None:
            cells = per[rev] = [(0, 0, 0, Histogram()) for _ in starts]
        n, e4, e5, h = cells[i]
        h.merge(Histogram.from_bytes(blob))
        cells[i] = (
            n + count,
            e4 + (count if cls == "4xx" else 0),
            e5 + (count if cls in ERROR_CLASSES else 0),
            h,
        )
    out: dict[str, Any] = {}
    for rev, cells in sorted(per.items()):
        out[rev] = {
            "t": [float(t) for t in starts],
            "rate": [n / res for n, _, _, _ in cells],
            "err_4xx": [_ratio(e4, n) for n, e4, _, _ in cells],
            "err_5xx": [_ratio(e5, n) for n, _, e5, _ in cells],
            **{name: [_q(h, q) for _, _, _, h in cells] for name, q in QUANTILES},
        }
    return {"resolution_s": res, "revisions": out}


def action_table(db: Path, service: str, since: float) -> list[dict[str, Any]]:
    """``[{"action", "revisions": {rev: {"requests", "errors", "error_rate", "p50",
    "p95", "p99"}}}]`` from ``since`` to now, busiest action first (errors: 5xx and
    "err")."""
    now = time.time()
    with _reading(db) as conn:
        if conn is None:
            return []
        res = FINE_S if since >= now - _fine_retention(conn) else COARSE_S
        rows = _rows(conn, service, res, since, now)
    acc: dict[str, dict[str, tuple[int, int, Histogram]]] = {}
    for _t, rev, action, cls, count, blob in rows:
        by_rev = acc.setdefault(action, {})
        n, e, h = by_rev.get(rev, (0, 0, Histogram()))
        h.merge(Histogram.from_bytes(blob))
        by_rev[rev] = (n + count, e + (count if cls in ERROR_CLASSES else 0), h)
    table: list[dict[str, Any]] = []
    for action, by_rev in acc.items():
        revisions = {
            rev: {
                "requests": n,
                "errors": e,
                "error_rate": _ratio(e, n),
                **{name: _q(h, q) for name, q in QUANTILES},
            }
            for rev, (n, e, h) in sorted(by_rev.items())
        }
        table.append({"action": action, "revisions": revisions})
    table.sort(key=lambda a: (-sum(r["requests"] for r in a["revisions"].values()), a["action"]))
    return table


def totals(db: Path, service: str, since: float, until: float) -> dict[str, dict[str, int]]:
    """revision -> status class -> requests from ``since`` to ``until`` (10 s rows; for
    checks and tests against HAProxy's own counters)."""
    with _reading(db) as conn:
        if conn is None:
            return {}
        rows = _rows(conn, service, FINE_S, since, until)
    out: dict[str, dict[str, int]] = {}
    for _t, rev, _action, cls, count, _blob in rows:
        by_class = out.setdefault(rev, {})
        by_class[cls] = by_class.get(cls, 0) + count
    return out
