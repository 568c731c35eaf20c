"""The collector's batch path (``reconciler.records.batch``) against the per-request path
it replaced (``parse_events`` -> dedupe -> ``to_record`` -> ``aggregate``) on the same
input: odd lines, lines split across reads, a reconnect that re-reads the ring; and the
Prometheus histogram fed per batch against one ``observe`` per request."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from reconciler.lb.haproxy.events import EventStream
from reconciler.lb.haproxy.requestlog import LOG_FORMAT, Request, parse_events, parse_rows
from reconciler.model import ActionSpec
from reconciler.present.metrics import CountsHistogram
from reconciler.records import collector
from reconciler.records.actions import ActionTable
from reconciler.records.aggregate import Cell, Key, Origin, Origins, aggregate, to_record
from reconciler.records.batch import Namer, SeenIds, aggregate_rows
from reconciler.records.collector import Follower, LBTarget, Records
from reconciler.records.histogram import PROMETHEUS_BUCKETS_S, SIZE
from reconciler.records.store import RecordsStore

WHERE = Origins(
    {("be_web", "h1.a"): Origin("web", "v1", "a", "h1"),
     ("be_web", "h1.b"): Origin("web", "v2", "b", "h1"),
     ("be_api", "h1.c"): Origin("api", "v1", "c", "h1")},
    {"be_web": "web", "be_api": "api"},
)
_FIELDS = ("%HPO", "%pid", "%rt", "%ST", "%Tr", "%Ta", "%Ts", "%HM", "%b", "%s", "%B")


def line(be: str = "be_web", srv: str = "h1.a", st: int = 200, tr: int = 3, ta: int = 12,
         size: int = 100, t: int = 1_700_000_005, pid: int = 42, n: int = 1,
         method: str = "GET", path: str = "/orders/17") -> str:
    """One request line in LOG_FORMAT, whatever it is."""
    values = {"%b": be, "%s": srv, "%ST": str(st), "%Tr": str(tr), "%Ta": str(ta),
              "%B": str(size), "%Ts": str(t), "%pid": str(pid), "%rt": str(n),
              "%HM": method, "%HPO": path}
    pattern = "|".join(re.escape(f) for f in _FIELDS)
    return re.sub(pattern, lambda m: values[m.group(0)], LOG_FORMAT)


def tables() -> dict[str, ActionTable]:
    # a small limit: which names get admitted depends on the order requests come in
    return {"web": ActionTable((ActionSpec("orders.show", "/orders/{id}", "GET"),), 3),
            "api": ActionTable((), 2)}


def mixed(rng: random.Random, count: int, first: int = 0) -> list[str]:
    """Request lines of every kind, and odd lines, in random order."""
    servers = [("be_web", "h1.a"), ("be_web", "h1.b"), ("be_api", "h1.c"),
               ("be_web", "h1.z"), ("be_other", "h9.x"), ("be_web", "<NOSRV>")]
    paths = ["/orders/17", "/orders/18", "/a/1", "/b/2", "/c", "/d/x", "noslash", "",
             "/e/0123456789abcdef0123", "/%20odd"]
    out = []
    for i in range(count):
        be, srv = rng.choice(servers)
        out.append(line(
            be, srv, st=rng.choice([200, 201, 304, 404, 500, 503, -1, 0, 101]),
            tr=rng.choice([-1, 0, 1, 5, 250]), ta=rng.choice([-1, 0, 1, 2, 40, 900, 70_000]),
            t=1_700_000_000 + rng.randrange(40), pid=rng.choice([42, 43]), n=first + i,
            method=rng.choice(["GET", "POST", "BREW", "PUT"]), path=rng.choice(paths)))
        if rng.random() < 0.05:
            out.append(rng.choice(["Proxy be_web stopped (cumulated conns: FE: 0, BE: 3).",
                                   "garbage", "", "reqlog", line()[:25]]))
    return out


def old_path(requests: Sequence[Request], where: Origins, tabs: dict[str, ActionTable]
             ) -> dict[Key, Cell]:
    """The per-request path the batch path replaced (dedupe by (pid, number), in order)."""
    seen: set[tuple[int, int]] = set()
    fresh = []
    for r in requests:
        if (r.pid, r.number) not in seen:
            seen.add((r.pid, r.number))
            fresh.append(r)
    return aggregate(rec for rec in (to_record(r, where, tabs) for r in fresh) if rec)


def new_path(texts: Sequence[str], where: Origins, tabs: dict[str, ActionTable]
             ) -> dict[Key, Cell]:
    namer, seen = Namer(where, tabs), SeenIds()
    cells: dict[Key, Cell] = {}
    for text in texts:
        got, _ = aggregate_rows(seen.fresh(parse_rows(text)), namer, 10)
        for k, c in got.items():
            cells[k] = c if k not in cells else cells[k].merge(c)
    return cells


@pytest.mark.parametrize("seed", range(5))
def test_batches_equal_the_per_request_path(seed: int) -> None:
    rng = random.Random(seed)
    lines = mixed(rng, 3000)
    text = "\n".join(lines) + "\n"
    old_tables, new_tables = tables(), tables()
    expected = old_path(parse_events(text), WHERE, old_tables)
    cuts = sorted(rng.sample(range(len(lines)), 20))  # batches at line boundaries
    texts = ["\n".join(lines[a:b]) + "\n" for a, b in zip([0, *cuts], [*cuts, len(lines)],
                                                         strict=True)]
    got = new_path(texts, WHERE, new_tables)
    assert got == expected
    assert sum(c.count for c in got.values()) > 1000
    assert {k[4] for k in got} >= {"1xx", "2xx", "3xx", "4xx", "5xx", "err"}
    assert any(k[2] == "-" for k in got)  # no server
    # the same names admitted, in the same order
    assert [t.admitted for t in new_tables.values()] == [t.admitted for t in old_tables.values()]


class FakeStream:
    """A socket that hands out ``chunks`` one per recv; None in the list: nothing more
    buffered for now (what a non-blocking recv says), the end of the list: EOF, or
    (``idle``) silence."""

    def __init__(self, chunks: Sequence[bytes | None], idle: bool = False) -> None:
        self.chunks = list(chunks)
        self.idle = idle
        self.timeout: float | None = None
        self.sent = b""

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            if self.idle:
                if self.timeout:
                    time.sleep(0.01)
                raise TimeoutError
            return b""
        chunk = self.chunks.pop(0)
        if chunk is None:
            raise BlockingIOError if self.timeout == 0.0 else TimeoutError
        return chunk

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def split_bytes(data: bytes, rng: random.Random, pieces: int) -> list[bytes | None]:
    """``data`` cut at random bytes (mid-line too), with gaps between some pieces."""
    cuts = sorted(rng.sample(range(1, len(data)), pieces))
    out: list[bytes | None] = []
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        out.append(data[a:b])
        if rng.random() < 0.5:
            out.append(None)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_lines_split_across_reads_are_joined(seed: int) -> None:
    rng = random.Random(seed)
    text = "\n".join(mixed(rng, 500)) + "\n"
    stream = EventStream(FakeStream(split_bytes(text.encode(), rng, 200)), "test")
    texts = []
    while (got := stream.read(0.1)) is not None:
        texts.append(got)
    assert len([t for t in texts if t]) > 5  # several reads, each of whole lines
    assert all(t.endswith("\n") for t in texts if t)
    assert [r for t in texts for r in parse_rows(t)] == parse_rows(text)
    assert new_path(texts, WHERE, tables()) == old_path(parse_events(text), WHERE, tables())


class FakeTransport:
    """Hands out the given streams, one per connection."""

    name = "local"

    def __init__(self, streams: Sequence[FakeStream]) -> None:
        self.streams = list(streams)
        self.opened: list[FakeStream] = []

    def open_unix(self, path: str, timeout: float) -> FakeStream:
        if not self.streams:
            raise OSError("no more connections")
        self.opened.append(self.streams.pop(0))
        return self.opened[-1]


@pytest.fixture
def records(tmp_path: Path) -> Iterator[Records]:
    r = Records(RecordsStore(tmp_path / "requests.db"), interval_s=3600)
    yield r
    r.stop()


def test_a_reconnect_rereads_the_ring_and_counts_each_request_once(
    records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector, "BATCH_S", 0.01)
    rng = random.Random(7)
    before = mixed(rng, 800)
    after = mixed(rng, 400, first=800)
    first = FakeStream(split_bytes(("\n".join(before) + "\n").encode(), rng, 50))
    # the ring again from its start (out of order: requests finish out of order), then new
    # (no soft-stop notice in it: one would make the follower let this worker go)
    replay = [x for x in before[200:] + before[:200] + after if not x.startswith("Proxy")]
    second = FakeStream(split_bytes(("\n".join(replay) + "\n").encode(), rng, 50), idle=True)
    transport = FakeTransport([first, second])
    records._tables = tables()  # the mapping a pass would give
    records._namer = Namer(WHERE, records._tables)
    target = LBTarget("h1", transport, "/s", True)  # type: ignore[arg-type]
    records._followers["h1"] = follower = Follower(target, records.ingest)
    follower.start()
    expected = old_path(parse_events("\n".join(before + after)), WHERE, tables())
    want = sum(c.count for c in expected.values())
    deadline = time.monotonic() + 10
    while records.ingested < want and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a further batch would show a double count
    assert records.ingested == want
    assert records._agg.cells == expected
    assert [s.sent for s in transport.opened] == [b"show events reqlog -wn\n",
                                                  b"show events reqlog -w\n"]


def test_seen_ids_forget_whole_batches_past_capacity() -> None:
    seen = SeenIds(capacity=4)
    a = parse_rows("\n".join(line(n=n) for n in (1, 2, 3)))
    b = parse_rows("\n".join(line(n=n) for n in (4, 5)))
    assert seen.fresh(a) == a and seen.fresh(b) == b
    assert seen.fresh(a[:1]) == []  # 5 held: at least the last 4 are remembered
    c = parse_rows("\n".join(line(n=n) for n in (6, 7, 8)))
    assert seen.fresh(c) == c
    assert seen.fresh(a) == a  # the first batch is forgotten
    assert seen.fresh(parse_rows(line(n=9) + "\n" + line(n=9))) == parse_rows(line(n=9))


def test_prometheus_counts_per_batch_equal_one_observe_per_request() -> None:
    rng = random.Random(3)
    values = [rng.choice([0, 1, 2, 3, 8, 70_000]) if rng.random() < 0.3
              else int(rng.expovariate(1 / 40)) for _ in range(5000)]
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("d", "d", ["a"], registry=one, buckets=PROMETHEUS_BUCKETS_S)
    h2 = CountsHistogram("d", "d", ["a"], registry=many, buckets=PROMETHEUS_BUCKETS_S)
    namer = Namer(WHERE, {})
    for chunk in (values[:2000], values[2000:]):
        text = "\n".join(line(ta=v, n=i) for i, v in enumerate(chunk))
        cells, _ = aggregate_rows(parse_rows(text), namer, 10)
        for cell in cells.values():
            h2.labels("x").add_counts(cell.total.counts, cell.sum_ms / 1000)
        for v in chunk:
            h1.labels("x").observe(v / 1000)
    assert len(cell.total.counts) == SIZE
    sample = re.compile(rb'd_bucket\{a="x",le="([^"]+)"\} (\S+)')
    want = sample.findall(generate_latest(one))
    assert len(want) == len(PROMETHEUS_BUCKETS_S) + 1
    assert sample.findall(generate_latest(many)) == want
    sums = [float(re.search(rb"d_sum\{a=\"x\"\} (\S+)", generate_latest(r)).group(1))  # type: ignore[union-attr]
            for r in (one, many)]
    assert sums[1] == pytest.approx(sums[0])


def test_one_read_takes_everything_buffered() -> None:
    lines = [line(n=n) + "\n" for n in range(4)]
    stream = EventStream(FakeStream([x.encode() for x in lines[:3]] + [None, lines[3].encode()]),
                         "test")
    assert stream.read(0.1) == "".join(lines[:3])  # one batch, not one recv
    assert stream.read(0.1) == lines[3]
    assert stream.read(0.1) is None and stream.closed


def test_bucket_table_is_bucket_of() -> None:
    """The precomputed table of whole ms (built run by run) agrees with ``bucket_of``."""
    from reconciler.records.batch import bucket_table
    from reconciler.records.histogram import BOUNDS, bucket_of

    last = int(BOUNDS[-1]) + 50
    assert bucket_table(last) == tuple(bucket_of(ms) for ms in range(last + 1))
    assert bucket_table(3) == tuple(bucket_of(ms) for ms in range(4))
