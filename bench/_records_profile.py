"""records_bench.py --profile: the collector's batch path on synthetic ring lines (no
HAProxy, no socket): what ``Records.ingest`` costs per request after ``parse_rows`` and
``SeenIds``, with the Prometheus sink and SQLite flushes as in ``reconcile watch``.

Two workloads of 200,000 requests in chunks of 1,250 (5,000 req/s read every 0.25 s):
"repetitive" (one path, times 0-4 ms: what the --ingest rig sends) and "varied" (1,000
paths with ids over 10 actions, exponential times of mean 40 ms, 4 status codes, two
servers). Prints the median of 5 passes in microseconds per request and the top of a
cProfile of one pass.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from reconciler import identity
from reconciler.lb.haproxy.requestlog import parse_rows
from reconciler.model import (
    DesiredState,
    ObservedContainer,
    ObservedHost,
    ObservedState,
    Service,
)
from reconciler.present.metrics import Metrics
from reconciler.records.batch import SeenIds
from reconciler.records.collector import Records
from reconciler.records.store import FILENAME, RecordsStore

N = 200_000
CHUNK = 1_250
LINE = ("reqlog be=be_web srv=local.{srv} st={st} tr={tr} ta={ta} b=75 t={t} id=4242.{n} "
        "m=GET p={path}\n")


def _world() -> tuple[DesiredState, ObservedState]:
    def c(name: str, rev: str) -> ObservedContainer:
        labels = ((identity.ENVIRONMENT, "bench"), (identity.SERVICE, "web"),
                  (identity.REVISION, rev))
        return ObservedContainer(name, name, labels, "running", "healthy", "x")

    observed = ObservedState(hosts=(ObservedHost("local", (c("c1", "v1"), c("c2", "v2"))),))
    desired = DesiredState("bench", "x", (), (Service("web", (), 1, ("local",)),), ())
    return desired, observed


def _chunks(varied: bool) -> list[str]:
    rng = random.Random(1)
    out = []
    for c in range(N // CHUNK):
        lines = []
        for i in range(CHUNK):
            n = c * CHUNK + i
            if varied:
                ta = int(rng.expovariate(1 / 40))
                lines.append(LINE.format(
                    srv=rng.choice(("c1", "c2")), st=rng.choice((200, 200, 200, 404, 500, 302)),
                    tr=max(ta - 1, 0), ta=ta, t=1_700_000_000 + n // 5000, n=n,
                    path=f"/a{rng.randrange(10)}/{rng.randrange(100)}"))
            else:
                lines.append(LINE.format(srv="c1", st=200, tr=0, ta=rng.randrange(5),
                                         t=1_700_000_000 + n // 5000, n=n, path="/orders/1"))
        out.append("".join(lines))
    return out


def _pass(chunks: list[str]) -> Callable[[], None]:
    desired, observed = _world()
    tmp = tempfile.mkdtemp()
    metrics = Metrics()
    records = Records(RecordsStore(Path(tmp) / FILENAME), sink=metrics.observe_cells)
    records.follow(desired, observed, {})
    seen = SeenIds()

    def run() -> None:
        for i, text in enumerate(chunks):
            records.ingest(seen.fresh(parse_rows(text)))
            if i % 40 == 39:  # every 10 s of requests, as the flusher does
                records.flush()
        records.flush()

    return run


def profile() -> None:
    for name, varied in (("repetitive", False), ("varied", True)):
        chunks = _chunks(varied)
        times = []
        for _ in range(5):
            run = _pass(chunks)
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        print(f"batch path, {name}: {statistics.median(times) / N * 1e6:.2f} us per request "
              f"(median of 5 passes of {N:,} requests)")
        run = _pass(chunks)
        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(8)
        print("\n".join(out.getvalue().splitlines()[4:18]))
