"""History growth: rows and size of history.sqlite after N idle looks (passes with
nothing to do, e.g. a paused canary at `interval: 1s` under `reconcile watch`), as the
runs were recorded before (one row per look) and now (idle looks folded into one run,
pruned to the default retention at the end of each look).

    python bench/history_bench.py [--looks 86400]

Uses the Store directly with the plan JSON of an empty plan (what an idle pass records);
no Docker, no HAProxy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reconciler.plan.planner import Plan
from reconciler.present.output import plan_json
from reconciler.store import Retention, Store

SUMMARY = "0/0 steps ok"


def one_row_per_look(store: Store, plan: str, looks: int) -> None:
    for _ in range(looks):
        run = store.start_run("production", "9e169b3" * 5 + "abcde", plan)
        store.finish_run(run, "nothing-to-do", {}, SUMMARY)


def folded(store: Store, plan: str, looks: int) -> None:
    for _ in range(looks):
        run = store.start_run("production", "9e169b3" * 5 + "abcde", plan)
        store.finish_idle(run, SUMMARY)
        store.prune("production", Retention())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--looks", type=int, default=86400, help="idle looks (a day at 1 s)")
    args = ap.parse_args()
    plan = plan_json(Plan("production", "9e169b3" * 5 + "abcde", ()), "commit 9e169b3 (web v2)")
    for name, record in (("one row per look (before)", one_row_per_look), ("folded (now)", folded)):
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "history.sqlite")
            t0 = time.perf_counter()
            record(store, plan, args.looks)
            took = time.perf_counter() - t0
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = store.size()
            store.close()
            print(
                f"{name:<27} {args.looks} looks: {size.runs:>6} rows, "
                f"{size.bytes / 1024:8.1f} KiB, {1e6 * took / args.looks:6.0f} us per look"
            )


if __name__ == "__main__":
    main()
