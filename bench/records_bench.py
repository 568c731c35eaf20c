"""Request records: what they cost.

--retention  size of <state_dir>/requests.db after a synthetic fill (every key active in
             every 10 s interval: the worst case), and the time of one flush.
--ingest     the collector's CPU (this process: stream reader, mapping, aggregation,
             Prometheus, SQLite flushes) while hey sends --rate requests/s through a real
             HAProxy, in CPU seconds per wall second and per request; then --throughput.
--throughput HAProxy's throughput at its limit (wrk), side by side in interleaved runs:
             no request log, the ring with no reader, the ring with the collector reading.
--profile    the collector's batch path on synthetic lines, no HAProxy: microseconds per
             request and a cProfile of it.

Run from the repository root:  python bench/records_bench.py --retention --ingest
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import log

from reconciler import identity
from reconciler.lb.haproxy.requestlog import LOG_FORMAT, RING
from reconciler.model import (
    DesiredState,
    ObservedContainer,
    ObservedHost,
    ObservedState,
    Service,
)
from reconciler.present.metrics import Metrics
from reconciler.records.aggregate import Cell, Key
from reconciler.records.collector import LBTarget, Records
from reconciler.records.store import FILENAME, RecordsStore
from reconciler.transport.local import LocalTransport

# --------------------------------------------------------------------------- retention


def synthetic_cells(t: int, keys: list[tuple[str, str, str, str]], rng: random.Random
                    ) -> dict[Key, Cell]:
    cells: dict[Key, Cell] = {}
    for service, rev, action, cls in keys:
        c = Cell()
        n = rng.randrange(5, 200)
        scale = rng.uniform(2, 40)
        for _ in range(n):
            ms = int(rng.expovariate(1 / scale))  # whole ms, as HAProxy logs them
            c.count += 1
            c.sum_ms += ms
            c.total.add(ms)
            c.ttfb.add(int(ms * 0.8))
        cells[(t, service, rev, action, cls)] = c
    return cells


def retention(args: argparse.Namespace) -> None:
    keys = [(f"svc{s}", f"r{r}", f"GET /a{a}/{{id}}", cls)
            for s in range(args.services) for r in range(2) for a in range(args.actions)
            for cls in ("2xx", "4xx", "5xx")]
    rng = random.Random(1)
    # one pool of cells reused with new times: building histograms is not what is measured
    pool = [synthetic_cells(0, keys, rng) for _ in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / FILENAME
        store = RecordsStore(db)
        start = 1_700_000_000 - 1_700_000_000 % 60
        intervals = int(args.hours * 360)
        times = []
        for i in range(intervals):
            t = start + 10 * i
            cells = {(t, *k[1:]): c for k, c in pool[i % len(pool)].items()}
            t0 = time.perf_counter()
            store.write(cells, now=t)
            times.append(time.perf_counter() - t0)
            if i % 720 == 0:
                log(f"  {i / 360:.0f} h filled")
        store.checkpoint()
        size = db.stat().st_size
        conn = store._conn
        fine = conn.execute("SELECT COUNT(*) FROM cells WHERE res=10").fetchone()[0]
        coarse = conn.execute("SELECT COUNT(*) FROM cells WHERE res=60").fetchone()[0]
        # the 1 min rows alone: their share of the file, to extrapolate them to 14 days
        conn.execute("DELETE FROM cells WHERE res=10")
        conn.execute("VACUUM")
        store.checkpoint()
        coarse_size = db.stat().st_size
        store.close()
    fine_size = size - coarse_size
    steady = fine_size * 24 / args.hours + coarse_size * 14 * 24 / args.hours
    print(f"keys: {len(keys)} ({args.services} services x 2 revisions x {args.actions} "
          f"actions x 3 classes), {args.hours:g} h of 10 s intervals, every key every interval")
    print(f"rows: {fine} at 10 s, {coarse} at 1 min; file {size / 1e6:.1f} MB "
          f"({size / (fine + coarse):.0f} bytes/row); the 1 min rows alone (vacuumed) "
          f"{coarse_size / 1e6:.1f} MB ({coarse_size / coarse:.0f} bytes/row), the 10 s rows "
          f"the rest ({fine_size / fine:.0f} bytes/row)")
    print(f"steady state (24 h at 10 s + 14 days at 1 min, extrapolated per resolution): "
          f"{steady / 1e6:.0f} MB")
    print(f"one flush ({len(keys)} cells): median {statistics.median(times) * 1000:.1f} ms, "
          f"p99 {sorted(times)[int(len(times) * 0.99)] * 1000:.1f} ms")


# --------------------------------------------------------------------------- ingest

HAPROXY_CFG = """global
    master-worker
    stats socket {root}/admin.sock mode 600 level admin
    nbthread 1
{ring}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
{log}
frontend fe_http
    bind 127.0.0.1:{port}
    default_backend be_web
backend be_web
    server local.c1 127.0.0.1:{backend_port}
"""
BACKEND_CFG = """global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tiny
    bind 127.0.0.1:{backend_port}
    http-request return status 200 content-type text/plain string ok
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    """An HAProxy in front of a tiny HAProxy backend (no logging), in a temp dir."""

    def __init__(self, root: Path, records: bool, log_format: str = LOG_FORMAT) -> None:
        self.root, self.port, backend_port = root, free_port(), free_port()
        ring = f"ring {RING}\n    format raw\n    maxlen 512\n    size 8388608\n"
        logs = f'    log ring@{RING} local0 info\n    log-format "{log_format}"\n'
        (root / "lb.cfg").write_text(HAPROXY_CFG.format(
            root=root, ring=ring if records else "", log=logs if records else "",
            port=self.port, backend_port=backend_port))
        (root / "be.cfg").write_text(BACKEND_CFG.format(backend_port=backend_port))
        self.procs = [
            subprocess.Popen(["haproxy", "-db", "-f", str(root / "be.cfg")]),
            subprocess.Popen(["haproxy", "-db", "-W", "-f", str(root / "lb.cfg")]),
        ]
        deadline = time.monotonic() + 10
        while not (root / "admin.sock").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy did not start")
            time.sleep(0.05)

    def lb_cpu(self) -> float:
        """CPU seconds the load balancer's worker used so far (from /proc)."""
        master = self.procs[1].pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        fields = Path(f"/proc/{children[0]}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(10)


def collector(root: Path) -> tuple[Records, Metrics]:
    labels = ((identity.ENVIRONMENT, "bench"), (identity.SERVICE, "web"),
              (identity.REVISION, "v1"))
    observed = ObservedState(hosts=(ObservedHost("local", (
        ObservedContainer("c1", "c1", labels, "running", "healthy", "x"),)),))
    metrics = Metrics()
    records = Records(RecordsStore(root / FILENAME), sink=metrics.observe_cells)
    target = LBTarget("local", LocalTransport(), str(root / "admin.sock"), True)
    desired = DesiredState("bench", "x", (), (Service("web", (), 1, ("local",)),), ())
    records.follow(desired, observed, {"local": target})
    return records, metrics


def ingest_run(rate: int, seconds: float) -> tuple[float, float, float, int]:
    """(collector CPU s, wall s, hey's achieved rate, requests recorded)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rig = Rig(root, records=True)
        records, _ = collector(root)
        try:
            time.sleep(1)  # the stream connects
            workers = 50
            hey = subprocess.Popen(
                ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(rate // workers),
                 f"http://127.0.0.1:{rig.port}/orders/1"],
                stdout=subprocess.PIPE, text=True)
            cpu0, wall0 = time.process_time(), time.monotonic()
            out, _ = hey.communicate(timeout=seconds + 60)
            time.sleep(0.5)  # the last lines
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            m = re.search(r"Requests/sec:\s+([\d.]+)", out)
            achieved = float(m.group(1)) if m else 0.0
        finally:
            records.stop()
            rig.stop()
        return cpu, wall, achieved, records.ingested


def wrk_rate(port: int, seconds: int) -> tuple[float, int]:
    """wrk's rate and how many requests it completed."""
    out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", f"http://127.0.0.1:{port}/x/1"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    return (float(m.group(1)) if m else 0.0), (int(n.group(1)) if n else 0)


MODES = ("off", "ring", "ring+collector")


def throughput_one(mode: str, seconds: int, log_format: str) -> tuple[float, int, int, float]:
    """wrk's rate against a fresh rig in ``mode`` (no request log; the ring with no
    reader; the ring and the collector reading it), how many requests wrk completed, how
    many the collector recorded, and the LB HAProxy's CPU microseconds per request."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rig = Rig(root, records=mode != "off", log_format=log_format)
        records = collector(root)[0] if mode == "ring+collector" else None
        try:
            time.sleep(1)  # the stream connects
            cpu0 = rig.lb_cpu()
            rate, sent = wrk_rate(rig.port, seconds)
            cpu = rig.lb_cpu() - cpu0
            time.sleep(0.5)  # the last lines
        finally:
            if records is not None:
                records.stop()
            rig.stop()
        return rate, sent, records.ingested if records is not None else 0, cpu / sent * 1e6


def ingest(args: argparse.Namespace) -> None:
    for tool in ("haproxy", "hey", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    cpus, rates, per_req = [], [], []
    for i in range(args.runs):
        cpu_s, wall, achieved, n = ingest_run(args.rate, args.seconds)
        cpu = cpu_s / wall
        cpus.append(cpu)
        rates.append(achieved)
        per_req.append(cpu_s / max(n, 1) * 1e6)
        log(f"  ingest run {i + 1}: {cpu * 100:.1f}% of a core at {achieved:.0f} req/s "
            f"({n} recorded, {per_req[-1]:.1f} us CPU per request)")
    print(f"collector CPU at {statistics.median(rates):.0f} req/s: median "
          f"{statistics.median(cpus) * 100:.1f}% of one core (runs: "
          f"{', '.join(f'{c * 100:.1f}' for c in cpus)}); "
          f"{statistics.median(per_req):.1f} us CPU per request (all of the process)")


def throughput(args: argparse.Namespace) -> None:
    got: dict[str, list[float]] = {m: [] for m in MODES}
    recorded: list[float] = []
    cost: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(args.runs):
        order = MODES[i % 3:] + MODES[:i % 3]  # interleaved, each mode in each position
        for mode in order:
            rate, sent, n, us = throughput_one(mode, args.wrk_seconds, args.log_format)
            got[mode].append(rate)
            cost[mode].append(us)
            if mode == "ring+collector":
                recorded.append(n / max(sent, 1))
            log(f"  throughput run {i + 1} {mode}: {rate:.0f} req/s, HAProxy {us:.1f} us/req"
                + (f" ({n} of {sent} recorded)" if n else ""))
    off = got["off"]
    print(f"HAProxy at its limit (wrk -t2 -c50 -d{args.wrk_seconds}s, medians of {args.runs}"
          " interleaved runs):")
    for mode in MODES:
        ratio = statistics.median(r / o for r, o in zip(got[mode], off, strict=True))
        print(f"  {mode:15} {statistics.median(got[mode]):8.0f} req/s  {ratio * 100:5.1f}% of"
              f" off  (runs: {', '.join(f'{r:.0f}' for r in got[mode])}); HAProxy "
              f"{statistics.median(cost[mode]):.1f} us CPU per request")
    print(f"  the collector recorded {min(recorded) * 100:.1f}% of wrk's requests at least "
          "(the rest: timed out or cut when wrk stopped, or overwritten in the ring unread)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--retention", action="store_true")
    p.add_argument("--ingest", action="store_true")
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--hours", type=float, default=24.0, help="synthetic fill length")
    p.add_argument("--services", type=int, default=3)
    p.add_argument("--actions", type=int, default=20)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--seconds", type=int, default=10, help="length of one ingest run")
    p.add_argument("--wrk-seconds", type=int, default=5)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--log-format", default=LOG_FORMAT,
                   help="HAProxy log-format of the throughput rigs, to compare formats (the "
                   "collector parses only LOG_FORMAT: compare 'off' and 'ring')")
    args = p.parse_args()
    if not (args.retention or args.ingest or args.throughput or args.profile):
        p.error("choose --retention, --ingest, --throughput and/or --profile")
    if args.profile:
        from _records_profile import profile

        profile()
    if args.retention:
        retention(args)
    if args.ingest:
        ingest(args)
    if args.ingest or args.throughput:
        throughput(args)


if __name__ == "__main__":
    main()
