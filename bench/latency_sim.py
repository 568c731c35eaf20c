"""Canary latency rules compared in simulation: the reconciler's sequential test on
slow-request counts vs fixed-threshold rules like Flagger's request-duration check
(tests/latency_sim.py has the traffic model and both rules).

For each scenario it runs ``--runs`` simulated canaries per rule at 30 requests/s
(about 300 per 10-s interval), 5% -> 25% -> 50% -> 100% a minute each, and prints how
often each rule aborted and the median number of intervals to its decision. Times are
lognormal (sigma 0.5-0.7); "one action" is a single action with median 20 ms; "4
actions" are 40% at 8 ms, 30% at 20 ms, 20% at 60 ms and 10% at 150 ms. Ours: the
manifest defaults (quantile 0.95, max_slowdown 1.2, min_ms 2, confidence 0.99).
The fixed rules abort after 5 failed checks of the canary's interval p99 (or p95)
against 1.2 times the baseline's true p99 (or p95), Flagger's ``request-duration``
with ``thresholdRange.max`` set by someone who knows the service's normal times.

    python bench/latency_sim.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from latency_sim import MIXED, ONE, Traffic, fixed, ours

SCENARIOS = [
    ("one action, identical", Traffic(ONE)),
    ("4 actions, identical", Traffic(MIXED)),
    ("one action, canary 1.5x (p95 1.5x)", Traffic(ONE, 1.5)),
    ("4 actions, all 1.5x (p95 1.5x)", Traffic(MIXED, 1.5)),
    ("one action, canary 1.2x (the allowed slowdown)", Traffic(ONE, 1.2)),
    ("4 actions, orders.show (30%) only 1.5x", Traffic(MIXED, 1.5, "orders.show")),
    ("4 actions, orders.show (30%) only 2x", Traffic(MIXED, 2.0, "orders.show")),
    ("4 actions, report (10%) only 2x", Traffic(MIXED, 2.0, "report")),
]


def _cell(rows: list[tuple[str, int]]) -> str:
    aborted = [i for a, i in rows if a == "abort"]
    share = len(aborted) / len(rows)
    median = f"{np.median(aborted):.0f}" if aborted else "-"
    return f"{share:.1%} ({median})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    print(f"{args.runs} runs per cell; aborted share (median intervals to the abort)\n")
    print("| scenario | ours | fixed p99 <= 1.2x | fixed p95 <= 1.2x |")
    print("|---|---|---|---|")
    for i, (name, traffic) in enumerate(SCENARIOS):
        same = Traffic(traffic.actions)
        p99, p95 = same.true_quantile(0.99), same.true_quantile(0.95)
        rng = np.random.default_rng(200 + i)
        rows = [
            [ours(rng, traffic) for _ in range(args.runs)],
            [fixed(rng, traffic, 1.2 * p99, 0.99) for _ in range(args.runs)],
            [fixed(rng, traffic, 1.2 * p95, 0.95) for _ in range(args.runs)],
        ]
        print(f"| {name} | " + " | ".join(_cell(r) for r in rows) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
