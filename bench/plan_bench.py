"""Planning benchmark: plan() for 10, 100, 1000 services of 4 containers each.

The observed state is synthetic (built by the tests' simulator, so it is exactly what a
converged run leaves), and two cases are timed: nothing to do, and a new release at
weight 10 for every tenth service. Prints medians over several runs.

    python bench/plan_bench.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import converge, desired, service, with_images

from reconciler.plan.planner import plan


def state(n: int, canary_every: int = 0):  # type: ignore[no-untyped-def]
    svcs = []
    for i in range(n):
        rels = [("v1", 50), ("v2", 50)]
        if canary_every and i % canary_every == 0:
            rels = [("v1", 45), ("v2", 45), ("v3", 10)]
        svcs.append(service(f"svc{i:04d}", rels, replicas=2, hosts=("h1",)))
    return desired(*svcs, hosts=("h1",), lb_hosts=("h1",))


def timed(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    print(f"{'services':>8} {'containers':>10} {'no-change median':>17} "
          f"{'10% canary median':>18} {'actions':>8}")
    for n in (10, 100, 1000):
        base = state(n)
        world = converge(base)
        changed = state(n, canary_every=10)
        world_changed = with_images(world, changed)
        idle = timed(lambda b=base, w=world: plan(b, w), args.runs)
        assert plan(base, world).empty
        busy = timed(lambda c=changed, w=world_changed: plan(c, w), args.runs)
        actions = len(plan(changed, world_changed).actions)
        containers = sum(len(h.containers) for h in world.hosts)
        print(f"{n:>8} {containers:>10} {idle * 1000:>14.1f} ms {busy * 1000:>15.1f} ms "
              f"{actions:>8}")
    _ = replace  # keep import for readers adapting the scenario


if __name__ == "__main__":
    main()
