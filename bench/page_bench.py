"""Status page benchmark: what one request of the page costs watch's process.

``PageData.overview`` (reshaping what the last pass observed, plus a read-only look at the
history's canary states and newest run) and ``PageData.passes(60)``. The observed state is
synthetic (the tests' simulator) with 10 and 100 services of 3 containers each. The history
holds 2000 runs. Prints the median over several runs, each of 100 requests.

    python bench/page_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import converge, desired, service

from reconciler.present.web.data import PageData, PageView
from reconciler.store import Store


def history(root: Path, runs: int) -> None:
    store = Store(root / "history.sqlite")
    for _ in range(runs):
        store.finish_run(store.start_run("prod", "c0ffee", "{}"), "ok", {}, "3/3 steps ok")
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="page-bench-"))
    history(root, 2000)
    for n in (10, 100):
        d = desired(*[service(f"s{i}", [("v1", 100)], replicas=3) for i in range(n)])
        view = PageView(d, converge(d), {}, None, time.time())
        data = PageData(root, lambda view=view: view, "prod")
        for name, call in (("overview", data.overview), ("passes(60)", partial(data.passes, 60))):
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                for _ in range(100):
                    call()
                times.append((time.perf_counter() - t0) / 100 * 1000)
            print(f"{n:>4} services  {name:<11} median {statistics.median(times):6.2f} ms/request")


if __name__ == "__main__":
    main()
