"""Change benchmark: `reconcile apply` vs docker compose v1 on the same change, under load.

Both sides run the same 10-service stack (svc0..svc9, `sample-app:v1`, 1 replica each)
on the local Docker engine. The measured change is the same on both: svc3's env
`GREETING` flips between two values (a/b, alternating run by run). While the change runs,
`hey` sends a fixed rate of requests to svc3:

- reconciler: through its embedded HAProxy (`http://127.0.0.1:<lb port>/svc3`), after a
  commit to a scratch manifests repository, timing `reconcile apply`;
- compose: straight to svc3's published port (compose has no load balancer), after an
  edit of docker-compose.yml, timing `docker-compose up -d`.

For each run it records the wall time of the change command, the failed requests (hey's
error distribution + non-2xx responses), the requests sent, and whether svc3 serves the
new greeting afterwards. It prints every run, the medians side by side and the ratio
reconciler/compose of the median wall time, then where the reconciler's time went (the
step durations of `reconcile history --run N`).

Not a test: nothing is asserted. The machine is shared with other work, so single
numbers are noisy; read the medians and the ratio. Everything it starts is removed at
the end, also on Ctrl-C or an error: the compose project (`down`), the containers
labelled `io.reconciler.environment=bench` and the embedded HAProxy (by the pid in
`<state dir>/bench/haproxy/haproxy.pid`), then the temporary directory.

    python bench/compose_bench.py [--runs 5] [--concurrency 10] [--qps 50] [--grace 5]

Needs: the images `sample-app:v1` (sample-repo/app/build.sh v1), `hey`, `docker-compose`
(Debian's 1.29), `haproxy`, `git`, and `reconcile` on PATH (else `python -m reconciler`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from _common import log, pids_with_arg, remove_containers, run_cmd, terminate, wait_engine

ENV = "bench"
SERVICES = [f"svc{i}" for i in range(10)]
TARGET = "svc3"
IMAGE = "sample-app"
REVISION = "v1"
LABEL = f"io.reconciler.environment={ENV}"

# --------------------------------------------------------------------------- helpers


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def greeting(service: str, variant: str) -> str:
    return f"{service}-greeting-{variant}"


def fetch(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def wait_serving(url: str, expect: str | None, timeout: float) -> None:
    """Wait until url answers 200 (with ``greeting=<expect>`` in the body, if given)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status, body = fetch(url)
        if status == 200 and (expect is None or f"greeting={expect} " in body):
            return
        last = f"HTTP {status} {body.strip()[:120]}"
        time.sleep(0.2)
    raise RuntimeError(f"{url} not serving {expect or 'anything'} within {timeout:.0f}s: {last}")


def serves_greeting(url: str, expect: str, tries: int = 5) -> bool:
    """True when each of ``tries`` requests gets ``greeting=<expect>``."""
    for _ in range(tries):
        status, body = fetch(url)
        if status != 200 or f"greeting={expect} " not in body:
            return False
    return True


# --------------------------------------------------------------------------- hey

_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.M)
_ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.*)$")


@dataclass
class HeyReport:
    statuses: dict[int, int]
    errors: dict[str, int]
    seconds: float

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    @property
    def failed(self) -> int:
        return sum(self.errors.values()) + self.non_2xx

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())


def parse_hey(text: str) -> HeyReport:
    total = re.search(r"^\s*Total:\s+([\d.]+) secs", text, re.M)
    if total is None:
        raise RuntimeError(f"hey printed no summary:\n{text[-2000:]}")
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("Status code distribution:"):
            section = "status"
        elif line.startswith("Error distribution:"):
            section = "error"
        elif line and not line[0].isspace():
            section = ""
        elif section == "status" and (m := _STATUS.match(line)):
            statuses[int(m.group(1))] = statuses.get(int(m.group(1)), 0) + int(m.group(2))
        elif section == "error" and (m := _ERROR.match(line)):
            key = _normalize_error(m.group(2).strip())
            errors[key] = errors.get(key, 0) + int(m.group(1))
    return HeyReport(statuses, errors, float(total.group(1)))


def _normalize_error(text: str) -> str:
    """Error text without the per-connection source port, so equal causes add up."""
    return re.sub(r"127\.0\.0\.1:\d+->", "127.0.0.1:*->", text)


class Hey:
    """One `hey` run at a fixed rate; -z is only a cap, stop() (SIGINT) ends it."""

    def __init__(self, url: str, concurrency: int, qps: int, cap_s: int) -> None:
        assert url.startswith("http://127.0.0.1:"), url  # load only ever goes to loopback
        self.proc = subprocess.Popen(
            ["hey", "-c", str(concurrency), "-q", str(qps), "-z", f"{cap_s}s", "-t", "5", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a Ctrl-C reaches us, not hey; we stop it ourselves
        )

    def stop(self) -> HeyReport:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # hey stops its workers, prints the summary
        out, _ = self.proc.communicate(timeout=30)
        return parse_hey(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- sides


@dataclass
class RunResult:
    side: str
    run: int
    wall_s: float
    failed: int
    sent: int
    served_new: bool
    rc: int
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    run_id: int | None = None  # reconciler: its history run
    load1: float = 0.0  # 1-minute load average when the run started (2 cores: noisy > 2)
    started: float = 0.0  # time.time() when the command started (to split the breakdown)


def reconcile_cmd(given: str | None) -> list[str]:
    """The reconcile executable: --reconcile, else the script beside this interpreter
    (not a pyenv shim, whose own start-up would be timed too), else `reconcile` on PATH,
    else `python -m reconciler`."""
    if given:
        return given.split()
    beside = Path(sys.executable).with_name("reconcile")
    if beside.exists():
        return [str(beside)]
    exe = shutil.which("reconcile")
    return [exe] if exe else [sys.executable, "-m", "reconciler"]


def compile_package() -> str:
    """Compile the ``reconciler`` package this interpreter imports (with this
    environment: PYTHONPATH picks a work tree) to bytecode, as ``pip install`` does, so
    no timed run pays for compiling it (PYTHONDONTWRITEBYTECODE would make every run
    pay). Returns the package folder, for the log."""
    code = "import os, reconciler; print(os.path.dirname(reconciler.__file__))"
    # Run from an empty folder, as the reconcile script imports (its own folder first,
    # then PYTHONPATH): with -c, the current folder would come first.
    with tempfile.TemporaryDirectory() as empty:
        where = run_cmd([sys.executable, "-c", code], cwd=Path(empty), timeout=60).stdout.strip()
    run_cmd([sys.executable, "-m", "compileall", "-q", where], timeout=300)
    return where


def service_yaml(name: str, greet: str, grace_s: int) -> str:
    return f"""apiVersion: reconciler/v1
kind: Service
name: {name}
image: {IMAGE}
releases:
  - revision: {REVISION}
    weight: 100
replicas: 1
hosts: [local]
port: 8080
health:
  http: /healthz
  interval: 1s
  timeout: 1s
  retries: 3
env:
  GREETING: "{greet}"
stop_grace_period: {grace_s}s
restart: unless-stopped
"""


class ReconcilerSide:
    name = "reconciler"

    def __init__(self, root: Path, grace_s: int, timeout_s: float, cmd: list[str]) -> None:
        self.repo = root / "manifests"
        self.state = root / "state"
        self.grace_s = grace_s
        self.timeout_s = timeout_s
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}/{TARGET}"
        self.cmd = cmd
        self.logs = root / "reconcile.log"

    def _git(self, *args: str) -> None:
        run_cmd(
            [
                "git",
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@localhost",
                "-c",
                "commit.gpgsign=false",
                *args,
            ],
            cwd=self.repo,
            timeout=30,
        )

    def setup(self) -> None:
        self.repo.mkdir(parents=True)
        (self.repo / "services").mkdir()
        (self.repo / "environments").mkdir()
        (self.repo / "inventory.yaml").write_text(
            "apiVersion: reconciler/v1\nkind: Inventory\nhosts:\n"
            "  - name: local\n    address: 127.0.0.1\n    roles: [app, lb]\n"
        )
        routes = "".join(f"      - {{path_prefix: /{s}, service: {s}}}\n" for s in SERVICES)
        (self.repo / "loadbalancer.yaml").write_text(
            "apiVersion: reconciler/v1\nkind: LoadBalancer\nname: edge\nhosts: [local]\n"
            "frontends:\n  - name: http\n"
            f'    bind: "127.0.0.1:{self.port}"\n    routes:\n{routes}'
            f"    default_service: {SERVICES[0]}\n"
        )
        (self.repo / "environments" / "bench.yaml").write_text(
            f"apiVersion: reconciler/v1\nkind: Environment\nname: {ENV}\n"
        )
        for s in SERVICES:
            self.write_service(s, "a")
        self._git("init", "-q", "-b", "main")
        self._git("add", "-A")
        self._git("commit", "-q", "-m", "10 services")
        run_cmd([*self.cmd, "validate", "--repo", str(self.repo)], timeout=60)

    def write_service(self, service: str, variant: str) -> None:
        (self.repo / "services" / f"{service}.yaml").write_text(
            service_yaml(service, greeting(service, variant), self.grace_s)
        )

    def apply(self) -> tuple[int, int | None, str]:
        """Run `reconcile apply`; (exit code, history run id, output)."""
        proc = subprocess.run(
            [
                *self.cmd,
                "apply",
                "--repo",
                str(self.repo),
                "--env",
                ENV,
                "--state-dir",
                str(self.state),
            ],
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            check=False,
        )
        with self.logs.open("a") as f:
            f.write(f"$ reconcile apply (exit {proc.returncode})\n{proc.stdout}{proc.stderr}\n")
        m = re.search(r"^run (\d+):", proc.stdout, re.M)
        return proc.returncode, int(m.group(1)) if m else None, proc.stdout + proc.stderr

    def deploy(self) -> None:
        rc, _, _ = self.apply()
        if rc != 0:
            raise RuntimeError(f"first reconcile apply failed; see {self.logs}")
        wait_serving(self.url, greeting(TARGET, "a"), 30)

    def prepare(self, variant: str) -> None:
        """Not timed: edit and commit the change."""
        self.write_service(TARGET, variant)
        self._git("commit", "-q", "-am", f"{TARGET} greeting {variant}")

    def execute(self) -> tuple[int, int | None, str]:
        """Timed: the apply."""
        return self.apply()

    @staticmethod
    def changed_nothing(output: str) -> bool:
        return "No changes" in output

    def history(self, run_id: int) -> tuple[dict[str, object] | None, list[dict[str, object]]]:
        base = [*self.cmd, "history", "--state-dir", str(self.state), "-o", "json"]
        runs = json.loads(run_cmd([*base, "--limit", "100"], timeout=60).stdout)
        run = next((r for r in runs if r["id"] == run_id), None)
        steps = json.loads(run_cmd([*base, "--run", str(run_id)], timeout=60).stdout)["steps"]
        return run, steps

    def cleanup(self) -> None:
        pid_file = self.state / ENV / "haproxy" / "haproxy.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            terminate(pid)
        # Workers of earlier configs (after reloads) are children of that master and go
        # with it; anything still running with our state dir on its command line is ours.
        for pid in pids_with_arg(str(self.state)):
            terminate(pid)
        remove_containers(["label=" + LABEL])


class ComposeSide:
    name = "compose"

    def __init__(self, root: Path, grace_s: int, timeout_s: float) -> None:
        self.dir = root / "compose"
        self.file = self.dir / "docker-compose.yml"
        self.project = f"rcbench{os.getpid()}"
        self.grace_s = grace_s
        self.timeout_s = timeout_s
        self.ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
        self.url = f"http://127.0.0.1:{self.ports[TARGET]}/"
        self.variants = dict.fromkeys(SERVICES, "a")
        self.logs = root / "compose.log"
        self.started = False

    def _compose(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["docker-compose", "-p", self.project, "-f", str(self.file), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with self.logs.open("a") as f:
            f.write(
                f"$ docker-compose {' '.join(args)} (exit {proc.returncode})\n"
                f"{proc.stdout}{proc.stderr}\n"
            )
        return proc

    def write(self) -> None:
        out = ['version: "2.4"', "services:"]
        for s in SERVICES:
            out += [
                f"  {s}:",
                f"    image: {IMAGE}:{REVISION}",
                "    environment:",
                f'      GREETING: "{greeting(s, self.variants[s])}"',
                "    ports:",
                f'      - "127.0.0.1:{self.ports[s]}:8080"',
                f"    stop_grace_period: {self.grace_s}s",
                "    restart: unless-stopped",
            ]
        self.file.write_text("\n".join(out) + "\n")

    def setup(self) -> None:
        self.dir.mkdir(parents=True)
        self.write()

    def deploy(self) -> None:
        self.started = True
        if self._compose("up", "-d", timeout=self.timeout_s).returncode != 0:
            raise RuntimeError(f"docker-compose up -d failed; see {self.logs}")
        wait_serving(self.url, greeting(TARGET, "a"), 30)

    def prepare(self, variant: str) -> None:
        """Not timed: edit the file."""
        self.variants[TARGET] = variant
        self.write()

    def execute(self) -> tuple[int, int | None, str]:
        """Timed: docker-compose up -d."""
        proc = self._compose("up", "-d", timeout=self.timeout_s)
        return proc.returncode, None, proc.stdout + proc.stderr

    @staticmethod
    def changed_nothing(output: str) -> bool:
        return all(f"_{s}_1 is up-to-date" in output for s in SERVICES)

    def cleanup(self) -> None:
        if self.started and self.file.exists():
            wait_engine(60)
            self._compose("down", "-t", "1", "--remove-orphans", timeout=180)
            remove_containers([f"label=com.docker.compose.project={self.project}"])
            run_cmd(["docker", "network", "rm", f"{self.project}_default"], timeout=60, check=False)


# --------------------------------------------------------------------------- measuring


def measure(
    side: ReconcilerSide | ComposeSide, run: int, variant: str, args: argparse.Namespace
) -> RunResult:
    expect_old = greeting(TARGET, "b" if variant == "a" else "a")
    wait_serving(side.url, expect_old, 30)  # only the change itself is measured
    cap = int(args.before + args.timeout + args.after + 10)
    side.prepare(variant)
    load1 = os.getloadavg()[0]
    hey = Hey(side.url, args.concurrency, args.qps, cap)
    try:
        time.sleep(args.before)
        started = time.time()
        t0 = time.perf_counter()
        rc, run_id, _ = side.execute()
        wall = time.perf_counter() - t0
        time.sleep(args.after)
        report = hey.stop()
    finally:
        hey.kill()
    served = serves_greeting(side.url, greeting(TARGET, variant))
    return RunResult(
        side.name,
        run,
        wall,
        report.failed,
        report.sent,
        served,
        rc,
        report.errors,
        report.statuses,
        run_id,
        load1,
        started,
    )


def measure_noop(side: ReconcilerSide | ComposeSide) -> tuple[float, bool]:
    """Wall time of the same command with nothing to change, no load; whether it said
    so (the reconciler: "No changes"; compose: every service "up-to-date")."""
    t0 = time.perf_counter()
    rc, _, out = side.execute()
    wall = time.perf_counter() - t0
    return wall, rc == 0 and side.changed_nothing(out)


def print_noop(noop: dict[str, list[tuple[float, bool]]]) -> None:
    if not any(noop.values()):
        return
    print("\nSame command with nothing to change (no load; fixed cost of one pass):")
    for side, samples in noop.items():
        if samples:
            med = statistics.median(w for w, _ in samples)
            quiet = sum(ok for _, ok in samples)
            print(
                f"  {side:<10} median {med:5.2f}s over {len(samples)} run(s); "
                f"reported nothing to do: {quiet}/{len(samples)}"
            )


def print_results(results: list[RunResult], runs: int) -> None:
    by = {s: [r for r in results if r.side == s] for s in ("reconciler", "compose")}
    print(
        "\nPer run (wall = the change command; failed = hey errors + non-2xx; "
        "load = 1-min load average at the start, this machine has "
        f"{os.cpu_count()} CPUs):"
    )
    print(
        f"{'run':>4}  {'side':<10} {'wall s':>7} {'failed':>7} {'sent':>7} "
        f"{'new greeting':>12} {'exit':>4} {'load':>5}  errors"
    )
    for r in sorted(results, key=lambda r: (r.run, r.side != "reconciler")):
        errs = "; ".join(f"{n}x {t[-70:]}" for t, n in sorted(r.errors.items())) or "-"
        non2 = {c: n for c, n in r.statuses.items() if not 200 <= c < 300}
        if non2:
            errs = f"status {non2}; {errs}"
        print(
            f"{r.run:>4}  {r.side:<10} {r.wall_s:7.2f} {r.failed:7d} {r.sent:7d} "
            f"{'yes' if r.served_new else 'NO':>12} {r.rc:>4} {r.load1:5.1f}  {errs}"
        )

    def med(side: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in by[side]) if by[side] else 0.0

    print(f"\nMedians over {runs} run(s) per side (shared, noisy machine: compare medians):")
    print(f"{'':<24}{'reconciler':>12}{'compose':>12}")
    for label, attr, fmt in (
        ("wall time of change (s)", "wall_s", "{:12.2f}"),
        ("failed requests", "failed", "{:12.1f}"),
        ("requests sent", "sent", "{:12.1f}"),
    ):
        print(
            f"{label:<24}" + fmt.format(med("reconciler", attr)) + fmt.format(med("compose", attr))
        )
    served = {s: sum(r.served_new for r in by[s]) for s in by}
    print(
        f"{'new greeting served':<24}{served['reconciler']:>9}/{len(by['reconciler'])}"
        f"{served['compose']:>9}/{len(by['compose'])}"
    )
    if med("compose", "wall_s") > 0:
        ratio = med("reconciler", "wall_s") / med("compose", "wall_s")
        print(f"\nratio reconciler/compose of median wall time: {ratio:.2f}")


def print_breakdown(side: ReconcilerSide, results: list[RunResult]) -> None:
    """Where the reconciler's wall time went, per run, from its history."""
    rec = [r for r in results if r.side == "reconciler" and r.run_id is not None]
    if not rec:
        return
    print("\nReconciler: where the wall time goes (from `reconcile history`):")
    print(
        "  before run = process start, imports, git, validation, lock, observe, plan;"
        " after run = history, printing, exit;\n"
        "  gate+rest = in run but in no step (health gates, the outcome check)"
    )
    kinds: dict[str, list[float]] = {}
    rows = []
    for r in rec:
        assert r.run_id is not None
        run, steps = side.history(r.run_id)
        if run is None:
            continue
        inside = float(run["finished_at"] or 0) - float(run["started_at"])  # type: ignore[arg-type]
        step_sum = sum(float(s["duration_s"]) for s in steps)  # type: ignore[arg-type]
        before = float(run["started_at"]) - r.started  # type: ignore[arg-type]
        rows.append((r, inside, step_sum, steps, before))
        for s in steps:
            kinds.setdefault(str(s["kind"]), []).append(float(s["duration_s"]))  # type: ignore[arg-type]
    print(
        f"  {'run':>4} {'history run':>11} {'wall':>6} {'before run':>10} {'in run':>7} "
        f"{'steps':>6} {'gate+rest':>9} {'after run':>9}"
    )
    for r, inside, step_sum, _, before in rows:
        print(
            f"  {r.run:>4} {r.run_id:>11} {r.wall_s:6.2f} {before:10.2f} "
            f"{inside:7.2f} {step_sum:6.2f} {inside - step_sum:9.2f} "
            f"{r.wall_s - inside - before:9.2f}"
        )
    mid = sorted(rows, key=lambda x: x[0].wall_s)[len(rows) // 2]
    print(f"\n  steps of the median run (history run {mid[0].run_id}):")
    for s in mid[3]:
        print(
            f"    [{s['step']:>2}] {s['status']:<7} {float(s['duration_s']):5.2f}s "  # type: ignore[arg-type]
            f"{s['description']}" + (f" - {s['detail']}" if s["detail"] else "")
        )
    print("\n  median duration per step kind over all runs:")
    for kind, vals in sorted(kinds.items()):
        print(f"    {kind:<20} {statistics.median(vals):5.2f}s  (n={len(vals)})")


def check_tools() -> None:
    missing = [
        t
        for t in ("hey", "docker-compose", "docker", "git", "haproxy")
        if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()
    ]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)}")
    img = f"{IMAGE}:{REVISION}"
    if run_cmd(["docker", "image", "inspect", img], timeout=30, check=False).returncode:
        sys.exit(f"image {img} is missing: run sample-repo/app/build.sh v1")
    leftover = run_cmd(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL}"], timeout=30
    ).stdout.split()
    if leftover:
        sys.exit(
            f"{len(leftover)} container(s) labelled {LABEL} exist already (another run of "
            "this benchmark, or a leftover): container names would clash. Remove them with\n"
            f"  docker rm -f $(docker ps -aq --filter label={LABEL})"
        )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="changes per side (default 5)")
    ap.add_argument("--concurrency", type=int, default=10, help="hey -c (default 10)")
    ap.add_argument("--qps", type=int, default=50, help="hey -q, per worker (default 50)")
    ap.add_argument("--grace", type=int, default=5, help="stop_grace_period, s (default 5)")
    ap.add_argument("--before", type=float, default=2.0, help="load before the change, s")
    ap.add_argument("--after", type=float, default=2.0, help="load after the change, s")
    ap.add_argument(
        "--timeout", type=float, default=120.0, help="limit of one change command, s (default 120)"
    )
    ap.add_argument(
        "--noop-runs",
        type=int,
        default=3,
        help="also time each side's command with nothing to change (default 3; 0: skip)",
    )
    ap.add_argument("--reconcile", help="reconcile command (default: see reconcile_cmd)")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (logs, manifests, history)",
    )
    args = ap.parse_args()
    check_tools()
    # Both unwind like Ctrl-C, so the cleanup runs (SIGINT explicitly: a shell starts
    # background jobs with SIGINT ignored, and Python then leaves it ignored).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    root = Path(tempfile.mkdtemp(prefix="compose-bench-"))
    rec = ReconcilerSide(root, args.grace, args.timeout, reconcile_cmd(args.reconcile))
    comp = ComposeSide(root, args.grace, args.timeout)
    results: list[RunResult] = []
    noop: dict[str, list[tuple[float, bool]]] = {"reconciler": [], "compose": []}
    log(f"work dir {root}; reconciler via HAProxy {rec.url}; compose direct {comp.url}")
    log(f"reconcile command: {' '.join(rec.cmd)}; package {compile_package()} (compiled)")
    log(
        f"load: hey -c {args.concurrency} -q {args.qps} "
        f"(~{args.concurrency * args.qps} req/s), {args.before}s before / {args.after}s after"
    )
    try:
        rec.setup()
        comp.setup()
        log("deploying the 10 services with reconcile apply ...")
        rec.deploy()
        log("deploying the 10 services with docker-compose up -d ...")
        comp.deploy()
        for run in range(1, args.runs + 1):
            variant = "b" if run % 2 else "a"
            # Alternate which side goes first, so drifting background load hits both.
            order = (rec, comp) if run % 2 else (comp, rec)
            for side in order:
                r = measure(side, run, variant, args)
                results.append(r)
                log(
                    f"run {run} {side.name:<10} wall {r.wall_s:6.2f}s failed {r.failed:5d} "
                    f"sent {r.sent:6d} new greeting {'yes' if r.served_new else 'NO'} "
                    f"exit {r.rc}"
                )
        for i in range(args.noop_runs):
            for side in (rec, comp) if i % 2 == 0 else (comp, rec):
                noop[side.name].append(measure_noop(side))
        print_results(results, args.runs)
        print_noop(noop)
        print_breakdown(rec, results)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        if results:
            print_results(results, args.runs)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        try:
            comp.cleanup()
            rec.cleanup()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if args.keep:
                log(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
