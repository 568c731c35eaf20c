"""Self-healing under load: every replica of a service stopped by hand, then one apply.

    python bench/heal_bench.py [--runs 3] [--rate 600] [--seconds 14]

Per run: deploy the sample staging environment (web, 2 replicas) with its own name and
port; start `hey` at ``--rate`` requests/s through HAProxy (fresh connections, CSV of
every request with its offset); after 2 s `docker stop` every web container; then run
one `reconcile apply`. From hey's CSV: the request rate, the failed requests before the
apply returned (the window while no replica exists: these may fail), the failed requests
after it (must be 0), and the seconds from the stop to the last failure ("serving again").
Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, remove_containers, run_cmd

from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths

ROOT = Path(__file__).resolve().parent.parent
RECONCILE = [sys.executable, "-m", "reconciler"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(repo: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b", "PATH": os.environ["PATH"]}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def one_run(tmp: Path, rate: int, seconds: float) -> dict[str, float]:
    env = f"heal{uuid.uuid4().hex[:6]}"
    port = free_port()
    repo = tmp / env
    shutil.copytree(ROOT / "sample-repo", repo, ignore=shutil.ignore_patterns("app"))
    staging = repo / "environments" / "staging.yaml"
    staging.write_text(staging.read_text().replace("name: staging", f"name: {env}")
                       .replace('"127.0.0.1:8081"', f'"127.0.0.1:{port}"')
                       .replace("replicas: 1", "replicas: 2"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bench")
    state = tmp / f"{env}-state"
    cli = [*RECONCILE, "apply", "--repo", str(repo), "--env", env, "--state-dir", str(state)]
    os.environ.setdefault("STAGING_DB_PASSWORD", "bench-only")
    try:
        run_cmd(cli, timeout=120)
        hey = subprocess.Popen(
            ["hey", "-z", f"{seconds}s", "-q", str(max(1, rate // 10)), "-c", "10",
             "-disable-keepalive", "-o", "csv", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t_hey = time.monotonic()
        time.sleep(2)  # steady load before the fault (pacing, not a wait for state)
        ids = run_cmd(["docker", "ps", "-q", "--filter", f"label=io.reconciler.environment={env}",
                       "--filter", "label=io.reconciler.service=web"]).stdout.split()
        run_cmd(["docker", "stop", "-t", "1", *ids], timeout=60)
        t_stop = time.monotonic() - t_hey
        apply = run_cmd(cli, timeout=120, check=False)
        t_applied = time.monotonic() - t_hey
        out, _ = hey.communicate(timeout=seconds + 60)
        if apply.returncode != 0:
            raise RuntimeError(f"apply failed:\n{apply.stdout}\n{apply.stderr}")
        rows = list(csv.DictReader(io.StringIO(out)))
        fails = [float(r["offset"]) for r in rows if r["status-code"] != "200"]
        ok = len(rows) - len(fails)
        return {
            "rate": len(rows) / seconds,
            "requests": len(rows),
            "ok": ok,
            "failed_in_window": sum(1 for f in fails if f <= t_applied),
            "failed_after": sum(1 for f in fails if f > t_applied),
            "serving_again_s": (max(fails) - t_stop) if fails else 0.0,
            "apply_s": t_applied - t_stop,
        }
    finally:
        HAProxy(HAProxyPaths.embedded(state, env)).stop()
        remove_containers([f"label=io.reconciler.environment={env}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=600, help="requests/s (hey -q x -c 10)")
    ap.add_argument("--seconds", type=float, default=14)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.runs):
            r = one_run(Path(d), args.rate, args.seconds)
            log(f"run {i + 1}: " + ", ".join(f"{k}={v:.1f}" for k, v in r.items()))
            results.append(r)
    print("median over", args.runs, "runs:")
    for key in results[0]:
        print(f"  {key:<18} {statistics.median(r[key] for r in results):.1f}")


if __name__ == "__main__":
    main()
