"""Watch pass time with the session's connections kept across passes, against a new
session (new SSH connections) every pass, on 3 app hosts and 1 LB host over SSH.

Four simulated hosts (tests/hosts_support.py: a network namespace each, with its own
dockerd and sshd) run `web` (1 replica per app host) behind HAProxy on the LB host.
After a first deploy, each measured pass is what `reconcile watch` does every drift
interval when nothing changed: one `Session.apply` (observe every host, judge, plan
nothing, verify, record an idle look). "kept": one Session for all passes (as `watch`
now does); "new": a Session per pass (as every pass did before, reopening each SSH
connection). The passes alternate kept/new so the machine's noise hits both alike.

Prints each pass and the medians; not a test, nothing is asserted.

    python bench/session_bench.py [--passes 15]

Needs root and what `.ci/setup` installs (iproute2, dockerd, sshd, haproxy, the images
sample-app:v1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import log  # noqa: E402
from fleet_support import Fleet  # noqa: E402
from hosts_support import start_hosts  # noqa: E402

from reconciler import instance  # noqa: E402
from reconciler.desired import policy as policies  # noqa: E402
from reconciler.desired.manifests import load_manifests, resolve  # noqa: E402
from reconciler.desired.source import RepoSpec, open_repo, read_commit, resolve_rev  # noqa: E402
from reconciler.model import DesiredState  # noqa: E402
from reconciler.session import Session  # noqa: E402


def desired_of(fleet: Fleet) -> tuple[DesiredState, policies.Policy]:
    spec = RepoSpec(location=str(fleet.repo), branch=None, subdir="")
    repo, root = open_repo(spec)
    snapshot = read_commit(repo, root, resolve_rev(spec, None))
    policy = policies.load(fleet.policy, fleet.state)
    desired = resolve(load_manifests(snapshot.files), fleet.env, snapshot.commit, policy)
    return replace(desired, instance=instance.resolve(fleet.state, None, False)), policy


def one_pass(session: Session, desired: DesiredState) -> float:
    t0 = time.monotonic()
    done = session.apply(desired, source="bench")
    elapsed = time.monotonic() - t0
    if not done.result.ok or not done.plan.empty:
        raise RuntimeError(f"the pass was not idle: {done.result}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--passes", type=int, default=15)
    args = ap.parse_args()
    sim = start_hosts(4, prefix="sb")
    kept: list[float] = []
    new: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fleet = Fleet(Path(tmp) / "f", sim, apps=sim.hosts[:3], lb=sim.hosts[3])
            try:
                code, out = fleet.apply()
                if code != 0:
                    raise RuntimeError(f"first deploy failed:\n{out}")
                desired, policy = desired_of(fleet)
                with Session(fleet.state, policy=policy) as session:
                    one_pass(session, desired)  # warm-up: connections opened once
                    for i in range(args.passes):
                        kept.append(one_pass(session, desired))
                        with Session(fleet.state, policy=policy) as fresh:
                            new.append(one_pass(fresh, desired))
                        log(f"pass {i + 1}: kept {kept[-1]:.3f} s, new {new[-1]:.3f} s")
            finally:
                fleet.cleanup()
    finally:
        sim.close()
    mk, mn = statistics.median(kept), statistics.median(new)
    print(f"\nidle watch pass on 3 app hosts + 1 LB host over SSH, median of {args.passes}")
    print("| connections | median pass | saved per pass |")
    print("|---|---|---|")
    print(f"| new every pass (before) | {mn:.3f} s | |")
    print(f"| kept across passes (now) | {mk:.3f} s | {mn - mk:.3f} s ({(mn - mk) / mn:.0%}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
