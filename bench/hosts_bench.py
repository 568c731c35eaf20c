"""Rollout benchmark: time to roll a release to 1, 3 and 6 app hosts over SSH.

Seven simulated hosts (tests/hosts_support.py: a network namespace each, with its own
dockerd and sshd), six app hosts and one LB host, reached only through SSH. For each
fleet size N in 1, 3, 6 an environment of its own runs `web` (1 replica per host) on the
first N hosts, all three side by side; after a first deploy and one warm-up switch (so
every host has both images), the sizes take turns (1, 3, 6, then 6, 3, 1, ...: the
machine's load drifts, and each size sees the same drift), each measured run switching
the release (v1 <-> v2, alternating) with `reconcile apply`
in this process (the CLI through click's runner: the same code path without the
interpreter start-up, which is the same for every N and would flatter the ratio), with
the default rollout (all hosts in one batch, 8 at a time).

Prints each run and, per N, the median wall time and the ratio to N=1 (the goal: 6
hosts at most 1.5 times 1 host), then the median time of each kind of step for N=6.
Not a test: nothing is asserted. The machine is shared: read medians and ratios.

    python bench/hosts_bench.py [--runs 5] [--sizes 1,3,6]

Needs root, iproute2, dockerd, sshd (openssh-server), haproxy and the images
sample-app:v1 and v2 (sample-repo/app/build.sh v1 v2): as `.ci/setup` leaves the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import log  # noqa: E402
from fleet_support import Fleet  # noqa: E402
from hosts_support import SimHost, start_hosts  # noqa: E402

from reconciler.store import Store  # noqa: E402


def switch(fleet: Fleet, revision: str) -> tuple[float, int]:
    fleet.revisions = [(revision, 100)]
    fleet.write(f"{revision} everywhere")
    t0 = time.monotonic()
    code, out = fleet.apply()
    elapsed = time.monotonic() - t0
    if code != 0:
        raise RuntimeError(f"apply failed:\n{out}")
    store = Store(fleet.state / "history.sqlite")
    try:
        run_id = store.runs(fleet.env, limit=1)[0].id
    finally:
        store.close()
    return elapsed, run_id


def engine_start(hosts: list[SimHost], image: str, runs: int = 3) -> float:
    """Median wall time for the hosts' own engines to create and start one container
    each, side by side, with no reconciler and no SSH (the Docker SDK on each host's
    socket): what the simulated hosts' shared CPUs cost by themselves."""
    walls = []
    for run in range(runs):

        def one(h: SimHost, run: int = run) -> None:
            c = h.docker()
            created = c.api.create_container(
                image,
                name=f"bench-baseline-{run}",
                host_config=c.api.create_host_config(
                    port_bindings={8080: (h.address, 19000 + run)}
                ),
                ports=[8080],
            )
            c.api.start(created["Id"])

        t0 = time.monotonic()
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(one, hosts))
        walls.append(time.monotonic() - t0)
        for h in hosts:
            h.docker().containers.get(f"bench-baseline-{run}").remove(force=True)
    return statistics.median(walls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="1,3,6")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    sim = start_hosts(max(sizes) + 1, prefix="rb")
    medians: dict[int, float] = {}
    baseline: dict[int, float] = {}
    times: dict[int, list[float]] = defaultdict(list)
    steps: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    fleets: dict[int, Fleet] = {}
    try:
        lb = sim.hosts[-1]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                # One environment per fleet size, side by side on the same hosts (own
                # containers, own HAProxy on its own port), so that the sizes can take
                # turns: the machine is shared, and its load drifts over minutes.
                for k, n in enumerate(sizes):
                    fleets[n] = Fleet(
                        Path(tmp) / f"n{n}", sim, apps=sim.hosts[:n], lb=lb, port=8080 + k
                    )
                    code, out = fleets[n].apply()
                    if code != 0:
                        raise RuntimeError(f"first deploy failed:\n{out}")
                    switch(fleets[n], "v2")  # warm-up: v2 copied to every host
                for i in range(args.runs):
                    revision = "v1" if i % 2 == 0 else "v2"
                    for n in sizes if i % 2 == 0 else sizes[::-1]:
                        elapsed, run_id = switch(fleets[n], revision)
                        times[n].append(elapsed)
                        log(f"N={n} run {i + 1}: -> {revision} {elapsed:.2f} s")
                        store = Store(fleets[n].state / "history.sqlite")
                        for step in store.steps(run_id):
                            steps[n][step["kind"]].append(step["duration_s"])
                        store.close()
                for n in sizes:
                    medians[n] = statistics.median(times[n])
                    baseline[n] = engine_start(sim.hosts[:n], "sample-app:v1")
                    log(
                        f"N={n} engines alone, one container each side by side: {baseline[n]:.2f} s"
                    )
            finally:
                for fleet in fleets.values():
                    fleet.cleanup()
    finally:
        sim.close()
    base = medians[min(sizes)]
    print(f"\nrelease switch over SSH, median of {args.runs} runs (default rollout: one batch)")
    print(
        "| app hosts | median | ratio to 1 host | engines alone: start 1 container each | ratio |"
    )
    print("|---|---|---|---|---|")
    b0 = baseline[min(sizes)]
    for n in sizes:
        print(
            f"| {n} | {medians[n]:.2f} s | {medians[n] / base:.2f} "
            f"| {baseline[n]:.2f} s | {baseline[n] / b0:.2f} |"
        )
    print(
        "\nThe simulated hosts share this machine's CPUs: the engines' own work grows with N"
        " (last columns) where separate machines would do it side by side."
    )
    print("\nmedian duration of each kind of step (count over all runs):")
    print("| step | " + " | ".join(f"{n} host(s)" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for kind in sorted({k for n in sizes for k in steps[n]}):
        cells = [
            f"{statistics.median(steps[n][kind]):.2f} s x{len(steps[n][kind])}"
            if steps[n][kind]
            else "-"
            for n in sizes
        ]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
