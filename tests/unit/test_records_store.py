"""The records database: writes at two resolutions, retention, restarts, and the query
API of the status page (``series``, ``action_table``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.records.aggregate import Origin, Origins, Record, aggregate
from reconciler.records.histogram import Histogram, bucket_of, bucket_range
from reconciler.records.oneshot import ingest_dump
from reconciler.records.query import action_table, series, totals
from reconciler.records.store import FILENAME, RecordsRetention, RecordsStore


def rec(t: float, rev: str = "v1", action: str = "GET /", status: int = 200,
        total: int = 10, service: str = "web") -> Record:
    return Record(service, rev, "c", "h1", action, status, 1, total, 10, int(t))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / FILENAME


def test_writes_merge_and_survive_a_reopen(db: Path) -> None:
    now = time.time()
    t0 = int(now) - int(now) % 60 - 120  # the start of a whole minute, 2 min ago
    s = RecordsStore(db)
    s.write(aggregate([rec(t0 + 1, total=5), rec(t0 + 2, total=50)]))
    s.write(aggregate([rec(t0 + 3, total=500), rec(t0 + 15, status=503)]))
    s.close()
    got = totals(RecordsStore(db).path, "web", t0, t0 + 59)
    assert got == {"v1": {"2xx": 3, "5xx": 1}}
    out = series(db, "web", t0, t0 + 19)
    assert out["resolution_s"] == 10
    v1 = out["revisions"]["v1"]
    assert v1["t"] == [t0, t0 + 10] and v1["rate"] == [0.3, 0.1]
    assert v1["err_5xx"] == [0.0, 1.0] and v1["err_4xx"] == [0.0, 0.0]
    lo, hi = bucket_range(bucket_of(50))
    assert lo <= v1["p50"][0] <= hi


def test_series_is_dense_and_reads_minutes_over_long_spans(db: Path) -> None:
    now = time.time()
    t0 = int(now) - int(now) % 60 - 600
    s = RecordsStore(db)
    s.write(aggregate([rec(t0 + 5), rec(t0 + 35, rev="v2"), rec(t0 + 65, status=404)]))
    out = series(db, "web", t0, t0 + 119)
    assert len(out["revisions"]["v1"]["t"]) == 12
    assert out["revisions"]["v2"]["rate"][3] == 0.1
    assert out["revisions"]["v2"]["p95"][0] is None and out["revisions"]["v2"]["err_5xx"][0] is None
    long = series(db, "web", now - 7 * 3600, now)
    assert long["resolution_s"] == 60
    v1 = long["revisions"]["v1"]
    by_t = dict(zip(v1["t"], v1["rate"], strict=True))
    assert by_t[t0] == pytest.approx(1 / 60) and by_t[t0 + 60] == pytest.approx(1 / 60)
    assert dict(zip(v1["t"], v1["err_4xx"], strict=True))[t0 + 60] == 1.0
    assert series(db, "other", t0, t0 + 60)["revisions"] == {}
    assert series(db.with_name("missing.db"), "web", t0, now) == {"resolution_s": 10, "revisions": {}}


def test_action_table_per_action_and_revision(db: Path) -> None:
    now = time.time()
    recs = [rec(now - 30, action="GET /a", total=10) for _ in range(8)]
    recs += [rec(now - 30, action="GET /a", status=500, total=10) for _ in range(2)]
    recs += [rec(now - 20, rev="v2", action="GET /a", total=100) for _ in range(5)]
    recs += [rec(now - 20, action="POST /b", status=404) for _ in range(3)]
    recs += [rec(now - 20, rev="-", action="GET /a", status=503)]  # no server: no revision's
    RecordsStore(db).write(aggregate(recs))
    table = action_table(db, "web", now - 300)
    assert [a["action"] for a in table] == ["GET /a", "POST /b"]
    a = table[0]["revisions"]
    assert set(a) == {"v1", "v2"}
    assert (a["v1"]["requests"], a["v1"]["errors"], a["v1"]["error_rate"]) == (10, 2, 0.2)
    lo, hi = bucket_range(bucket_of(100))
    assert lo <= a["v2"]["p99"] <= hi
    assert table[1]["revisions"]["v1"]["errors"] == 0  # 4xx are no errors
    assert set(a["v1"]) == {"requests", "errors", "error_rate", "p50", "p95", "p99"}


def test_retention_prunes_each_resolution_after_its_age(db: Path) -> None:
    day = 86400
    s = RecordsStore(db, RecordsRetention(fine_s=day, coarse_s=3 * day))
    base = 1_700_006_400  # a whole minute
    s.write(aggregate([rec(base), rec(base + 2 * day), rec(base + 4 * day)]), now=base)
    conn = s._conn
    def rows(res: int) -> list[int]:
        return [t for (t,) in conn.execute("SELECT t FROM cells WHERE res=? ORDER BY t", (res,))]
    assert rows(10) == [base, base + 2 * day, base + 4 * day]
    s.prune(base + 2 * day + 5, force=True)
    assert rows(10) == [base + 2 * day, base + 4 * day]
    assert rows(60) == [base, base + 2 * day, base + 4 * day]
    s.prune(base + 4 * day + 5, force=True)
    assert rows(10) == [base + 4 * day]
    assert rows(60) == [base + 2 * day, base + 4 * day]


def test_the_coarse_rows_hold_the_merged_histograms(db: Path) -> None:
    s = RecordsStore(db)
    base = 1_700_006_400
    recs = [rec(base + i, total=i) for i in range(60)]
    s.write(aggregate(recs), now=base)
    (blob, ttfb) = s._conn.execute("SELECT hist, ttfb FROM cells WHERE res=60").fetchone()
    assert Histogram.from_bytes(blob) == Histogram.of(range(60))
    assert ttfb == b""  # no TTFB over weeks: nothing reads it
    fine = s._conn.execute("SELECT ttfb FROM cells WHERE res=10").fetchall()
    assert sum(Histogram.from_bytes(b).total for (b,) in fine) == 60


def test_one_shot_ingestion_counts_each_line_once(db: Path) -> None:
    s = RecordsStore(db)
    where = Origins({("be_web", "h1.a"): Origin("web", "v1", "a", "h1")}, {"be_web": "web"})
    now = int(time.time())
    line = "reqlog be=be_web srv=h1.a st=200 tr=1 ta=2 b=5 t={t} id=9.{n} m=GET p=/x\n"
    first = "".join(line.format(t=now, n=n) for n in range(5))
    assert ingest_dump(s, "lb1", first, where, {}) == 5
    assert ingest_dump(s, "lb1", first, where, {}) == 0
    second = first + "".join(line.format(t=now, n=n) for n in range(5, 8))
    assert ingest_dump(s, "lb1", second, where, {}) == 3
    assert totals(db, "web", now - 20, now + 20) == {"v1": {"2xx": 8}}
    assert s.cursor("lb1") == (9, 7)
