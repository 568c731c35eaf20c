"""Start-up benchmark: wall time of `reconcile --help` (median of several runs).

    python bench/startup_bench.py [--runs 15]

Also prints `python -c pass` as the floor, and the import time of the CLI module.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def median_wall(cmd: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    exe = shutil.which("reconcile")
    cmds = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "python -m reconciler --help": [sys.executable, "-m", "reconciler", "--help"],
    }
    if exe:
        cmds["reconcile --help"] = [exe, "--help"]
    for name, cmd in cmds.items():
        print(f"{name:<30} median {median_wall(cmd, args.runs) * 1000:7.1f} ms "
              f"over {args.runs} runs")


if __name__ == "__main__":
    main()
