"""Canary decision rules compared in simulation: the reconciler's sequential test vs
Flagger's fixed success-rate threshold (tests/canary_sim.py has the traffic model).

For each scenario (baseline and canary error rates) it runs ``--runs`` simulated canaries
per rule at 50 requests/s, 5% -> 25% -> 50% -> 100% a minute each, judged every 10 s,
and prints how often each rule aborted and the median time to its decision. Flagger is
run with min success rate 99% (its documented example) and 98%, threshold 5.

    python bench/canary_sim.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from canary_sim import Traffic, flagger, ours

SCENARIOS = [
    (0.01, 0.01),
    (0.01, 0.02),
    (0.01, 0.03),
    (0.005, 0.005),
    (0.005, 0.015),
    (0.001, 0.001),
    (0.001, 0.003),
    (0.001, 0.05),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    print(
        "| baseline | canary | ours: aborted | Flagger 99%: aborted | Flagger 98%: aborted "
        "| median s to decide (ours / F99 / F98) |"
    )
    print("|---|---|---|---|---|---|")
    for i, (be, ce) in enumerate(SCENARIOS):
        traffic = Traffic(baseline_error=be, canary_error=ce)
        rng = np.random.default_rng(100 + i)
        rows = {
            "ours": [ours(rng, traffic) for _ in range(args.runs)],
            "f99": [flagger(rng, traffic, min_success=0.99) for _ in range(args.runs)],
            "f98": [flagger(rng, traffic, min_success=0.98) for _ in range(args.runs)],
        }
        aborted = {k: sum(a == "abort" for a, _ in v) / args.runs for k, v in rows.items()}
        times = {k: float(np.median([s for _, s in v])) for k, v in rows.items()}
        print(
            f"| {be:.1%} | {ce:.1%} | {aborted['ours']:.1%} | {aborted['f99']:.1%} "
            f"| {aborted['f98']:.1%} "
            f"| {times['ours']:.0f} / {times['f99']:.0f} / {times['f98']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
