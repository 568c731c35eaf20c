"""Watch benchmark: push -> served latency of `reconcile watch`, and what it costs idle.

(a) Latency. A scratch manifests repository (sample-repo's inventory and `web` service,
one load balancer on a free 127.0.0.1 port, environment `watchbench`) is pushed to a local
bare repository that `reconcile watch` follows with its defaults (`--poll 2`,
`--drift-interval 60`). Each of `--pushes` pushes is a new release of `web`, cycling
through the local images sample-app:v1 -> v2 -> v3 -> v1 ...; for each it measures the
time from `git push` returning to the first response served by the new revision through
HAProxy (a new connection every `--interval` seconds, 20 ms by default). Interleaved with
the pushes, it measures the container's own time-to-healthy: `docker run -d` of the same
image with the same env and limits (port 8080 published on a free ephemeral 127.0.0.1
port, picked up front like the reconciler does) until GET /healthz answers 200, and the
same through the Engine API (docker-py create + start, as the reconciler starts them, so
without the CLI's own start-up). It prints the medians and the difference (the goal: at
most 3 s beyond time-to-healthy), and explains one pass: its timeline from the history
database and the output of `reconcile history --run N --state-dir ...`.

(b) Idle cost. A fresh watch process, nothing to change, for `--idle-seconds` (default 60)
after its first pass (and `--settle` seconds): CPU used (utime+stime from /proc/PID/stat,
ticks / SC_CLK_TCK) as % of one core, the same including child processes (GitPython keeps
a `git cat-file` running), passes in the window, and peak RSS (VmHWM of /proc/PID/status).
The goal: under 1% of one core and under 80 MB. Measured with the defaults (`--poll 2`,
`--drift-interval 60`) and again with `--drift-interval 10` (`--compare-drift`, 0 skips).

Not a test: nothing is asserted. The machine is shared; read the medians. Everything it
starts is removed at the end, also on Ctrl-C, SIGTERM or an error: the watch processes
(SIGTERM, then SIGKILL), the embedded HAProxy (pid file under the state directory, and
any process with the state directory on its command line), the containers labelled
`io.reconciler.environment=watchbench` (the reconciler's and the time-to-healthy ones),
and the temporary directory (kept with `--keep`). All traffic goes to 127.0.0.1.

    python bench/watch_bench.py [--pushes 5] [--healthy-runs 5] [--interval 0.02]
        [--idle-seconds 60] [--settle 5] [--compare-drift 10] [--replicas N] [--keep]

Needs: Docker with the images sample-app:v1, v2, v3 (sample-repo/app/build.sh), `haproxy`,
`git`, and the reconciler installed in this interpreter (`reconcile` beside it, else
`python -m reconciler`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _common import log, pids_with_arg, remove_containers, run_cmd, terminate

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample-repo"
ENV = "watchbench"
ENV_LABEL = "io.reconciler.environment"
LABEL = f"{ENV_LABEL}={ENV}"
REVISIONS = ("v1", "v2", "v3")
GOAL_OVERHEAD_S = 3.0
GOAL_CPU_PCT = 1.0
GOAL_RSS_MB = 80.0
TICKS = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, timeout: float = 1.0) -> tuple[int, str]:
    """One GET on a new connection to 127.0.0.1; (0, error) when it fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def poll_until(
    port: int, path: str, ok: Any, t0: float, interval: float, timeout: float
) -> tuple[float, int]:
    """Poll GET path every ``interval`` s from ``t0`` (perf_counter) until ``ok(status,
    body)``; (seconds since t0, requests that failed or got no 2xx)."""
    bad = 0
    tick = t0
    last = ""
    while True:
        status, body = get(port, path)
        now = time.perf_counter()
        if ok(status, body):
            return now - t0, bad
        if not 200 <= status < 300:
            bad += 1
        last = f"HTTP {status} {body.strip()[:100]}"
        if now - t0 > timeout:
            raise RuntimeError(f"127.0.0.1:{port}{path}: no success within {timeout:.0f}s: {last}")
        tick += interval
        time.sleep(max(0.0, tick - time.perf_counter()))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def reconcile_cmd() -> list[str]:
    """The reconcile script beside this interpreter (no shim in between), else -m."""
    beside = Path(sys.executable).with_name("reconcile")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "reconciler"]


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime+stime, cutime+cstime) of ``pid`` in clock ticks."""
    f = _stat_fields(pid)
    return int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


def descendants(pid: int) -> dict[int, int]:
    """Live descendants of ``pid`` -> their utime+stime ticks."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    found[child] = cpu_ticks(child)[0]
                    frontier.append(child)
    return found


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- cleanup


# --------------------------------------------------------------------------- the setup


@dataclass
class Sample:
    """One push: the revision it released and what was measured."""

    n: int
    old: str
    new: str
    sha: str
    pushed_wall: float  # time.time() when `git push` returned
    latency_s: float  # push returned -> first response of the new revision
    bad: int  # polls without a 2xx answer (connection errors included) meanwhile
    run_id: int | None = None
    load1: float = 0.0


@dataclass
class Idle:
    drift_s: float
    poll_s: float
    window_s: float
    cpu_self_s: float
    cpu_all_s: float  # the watch process and its child processes
    passes: int  # runs recorded in the window (drift passes; nothing to do)
    hwm_mb: float
    rss_mb: float
    children: list[str] = field(default_factory=list)


class Watch:
    """One `reconcile watch` process (its own session: a Ctrl-C reaches the benchmark,
    which stops it with SIGTERM)."""

    def __init__(self, bench: Bench, *, poll: float, drift: float, tag: str) -> None:
        self.metrics_port = free_port()
        self.log_path = bench.root / f"watch-{tag}.log"
        self.out = self.log_path.open("w")
        self.poll, self.drift = poll, drift
        self.proc = subprocess.Popen(
            [
                *bench.cmd,
                "watch",
                "--repo",
                str(bench.bare),
                "--branch",
                "main",
                "--env",
                ENV,
                "--state-dir",
                str(bench.state),
                "--poll",
                str(poll),
                "--drift-interval",
                str(drift),
                "--metrics-addr",
                f"127.0.0.1:{self.metrics_port}",
                "--ui-addr",
                "off",
                "--log-format",
                "json",
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"reconcile watch exited {self.proc.returncode}:\n{tail}")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log(f"watch pid {self.pid} did not stop within 60s of SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()
        return self.proc.returncode


class Bench:
    def __init__(self, root: Path, replicas: int | None) -> None:
        self.root = root
        self.repo = root / "manifests"
        self.bare = root / "remote.git"
        self.state = root / "state"
        self.port = free_port()
        self.cmd = reconcile_cmd()
        self.replicas = replicas
        self.watches: list[Watch] = []
        web = yaml.safe_load((SAMPLE / "services" / "web.yaml").read_text())
        self.web_env: dict[str, str] = {str(k): str(v) for k, v in web.get("env", {}).items()}
        res = web.get("resources", {})
        self.memory = str(res["memory"]) if "memory" in res else None
        self.cpus = str(res["cpus"]) if "cpus" in res else None
        self.health_path = str(web["health"]["http"])

    # ---------------------------------------------------------------- git

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return run_cmd(
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
            cwd=cwd or self.repo,
            timeout=60,
        ).stdout.strip()

    def setup(self) -> None:
        (self.repo / "services").mkdir(parents=True)
        (self.repo / "environments").mkdir()
        shutil.copy(SAMPLE / "inventory.yaml", self.repo / "inventory.yaml")
        shutil.copy(SAMPLE / "services" / "web.yaml", self.repo / "services" / "web.yaml")
        (self.repo / "loadbalancer.yaml").write_text(
            "apiVersion: reconciler/v1\nkind: LoadBalancer\nname: edge\nhosts: [local]\n"
            "frontends:\n  - name: http\n"
            f'    bind: "127.0.0.1:{self.port}"\n    default_service: web\n'
        )
        env = f"apiVersion: reconciler/v1\nkind: Environment\nname: {ENV}\n"
        if self.replicas is not None:
            env += f"services:\n  web:\n    replicas: {self.replicas}\n"
        (self.repo / "environments" / f"{ENV}.yaml").write_text(env)
        self.set_revision("v1")
        self.git("init", "-q", "-b", "main")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "web v1")
        run_cmd([*self.cmd, "validate", "--repo", str(self.repo)], timeout=60)
        self.git("clone", "-q", "--bare", str(self.repo), str(self.bare), cwd=self.root)
        self.git("remote", "add", "origin", str(self.bare))

    def set_revision(self, rev: str) -> None:
        f = self.repo / "services" / "web.yaml"
        text, n = re.subn(r"(?m)^(\s*- revision: )v\d+$", rf"\g<1>{rev}", f.read_text())
        assert n == 1, "web.yaml must have exactly one release"
        f.write_text(text)

    def commit(self, rev: str) -> str:
        self.set_revision(rev)
        self.git("commit", "-q", "-am", f"web {rev}")
        return self.git("rev-parse", "HEAD")

    def push(self) -> tuple[float, float]:
        """Push; (perf_counter, time.time()) when `git push` returned."""
        self.git("push", "-q", "origin", "HEAD:main")
        return time.perf_counter(), time.time()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    # ---------------------------------------------------------------- history

    def db_rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        path = self.state / "history.sqlite"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # the watcher has not created the tables yet
            return []
        finally:
            db.close()

    def wait_run_done(self, sha: str, watch: Watch, timeout: float) -> tuple[int, str]:
        """The (id, status) of the first finished run of ``sha``."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.db_rows(
                "SELECT id, status FROM runs WHERE environment = ? AND commit_id = ? "
                "AND finished_at IS NOT NULL ORDER BY id",
                (ENV, sha),
            )
            if rows:
                return int(rows[0][0]), str(rows[0][1])
            watch.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no finished run of {sha[:7]} within {timeout:.0f}s")
            time.sleep(0.2)

    def last_run_id(self) -> int:
        rows = self.db_rows("SELECT max(id) FROM runs")
        return int(rows[0][0] or 0) if rows else 0

    def wait_new_run(self, after: int, watch: Watch, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.db_rows(
            "SELECT id FROM runs WHERE id > ? AND finished_at IS NOT NULL", (after,)
        ):
            watch.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the watcher made no pass within {timeout:.0f}s")
            time.sleep(0.2)

    def run_row(self, run_id: int) -> tuple[float, float, str]:
        started, finished, status = self.db_rows(
            "SELECT started_at, finished_at, status FROM runs WHERE id = ?", (run_id,)
        )[0]
        return float(started), float(finished or started), str(status)

    def steps(self, run_id: int) -> list[dict[str, Any]]:
        out = run_cmd(
            [
                *self.cmd,
                "history",
                "--run",
                str(run_id),
                "--state-dir",
                str(self.state),
                "-o",
                "json",
            ]
        ).stdout
        return list(json.loads(out)["steps"])

    def history_text(self, run_id: int) -> str:
        return run_cmd(
            [*self.cmd, "history", "--run", str(run_id), "--state-dir", str(self.state)]
        ).stdout

    # ---------------------------------------------------------------- measuring

    def serving(self, rev: str) -> Any:
        return lambda status, body: status == 200 and f"revision={rev} " in body

    def time_to_healthy(self, rev: str, n: int, interval: float, timeout: float) -> float:
        """`docker run -d` of sample-app:<rev> (web's env and limits) until /healthz is 200."""
        port = free_port()
        name = f"{ENV}-healthy-{os.getpid()}-{n}"
        cmd = [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--label",
            LABEL,
            "--label",
            "io.reconciler-bench=watch-healthy",
            "-p",
            f"127.0.0.1:{port}:8080",
        ]
        if self.memory:
            cmd += ["--memory", self.memory]
        if self.cpus:
            cmd += ["--cpus", self.cpus]
        for k, v in sorted(self.web_env.items()):
            cmd += ["-e", f"{k}={v}"]
        cmd.append(f"sample-app:{rev}")
        t0 = time.perf_counter()
        try:
            run_cmd(cmd, timeout=timeout)
            took, _ = poll_until(
                port, self.health_path, lambda s, _b: s == 200, t0, interval, timeout
            )
            return took
        finally:
            run_cmd(["docker", "rm", "-f", name], timeout=60, check=False)

    def time_to_healthy_api(self, rev: str, n: int, interval: float, timeout: float) -> float:
        """The same through the Engine API as the reconciler calls it (docker-py: create,
        start): no CLI start-up in the number."""
        import docker

        port = free_port()
        name = f"{ENV}-healthy-api-{os.getpid()}-{n}"
        client = docker.from_env(timeout=int(timeout))
        try:
            t0 = time.perf_counter()
            api = client.api
            host_config = api.create_host_config(
                port_bindings={8080: ("127.0.0.1", port)},
                mem_limit=self.memory,
                nano_cpus=int(float(self.cpus) * 1e9) if self.cpus else None,
            )
            created = api.create_container(
                f"sample-app:{rev}",
                name=name,
                labels={ENV_LABEL: ENV, "io.reconciler-bench": "watch-healthy"},
                environment=self.web_env,
                ports=[8080],
                host_config=host_config,
            )
            api.start(created["Id"])
            took, _ = poll_until(
                port, self.health_path, lambda s, _b: s == 200, t0, interval, timeout
            )
            return took
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                client.api.remove_container(name, force=True)
            client.close()

    def idle(
        self, *, poll: float, drift: float, seconds: float, settle: float, timeout: float
    ) -> Idle:
        before = self.last_run_id()
        w = Watch(self, poll=poll, drift=drift, tag=f"idle-drift{drift:g}")
        self.watches.append(w)
        self.wait_new_run(before, w, timeout)  # its first pass (nothing to do)
        time.sleep(settle)
        w.check_alive()
        pid = w.pid
        own0, reaped0 = cpu_ticks(pid)
        kids0 = descendants(pid)
        wall0, t0 = time.time(), time.perf_counter()
        log(
            f"idle window of {seconds:g}s, watch pid {pid} (--poll {poll:g} "
            f"--drift-interval {drift:g}) ..."
        )
        time.sleep(seconds)
        w.check_alive()
        own1, reaped1 = cpu_ticks(pid)
        kids1 = descendants(pid)
        window = time.perf_counter() - t0
        wall1 = time.time()
        hwm = status_kb(pid, "VmHWM") / 1024
        rss = status_kb(pid, "VmRSS") / 1024
        children = []
        for child in kids1:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                children.append(
                    f"pid {child}: {cmdline.decode(errors='replace').strip()[:60]} "
                    f"(RSS {status_kb(child, 'VmRSS') / 1024:.1f} MiB)"
                )
        kid_ticks = sum(t - kids0.get(p, 0) for p, t in kids1.items())
        passes = self.db_rows(
            "SELECT count(*) FROM runs WHERE environment = ? AND started_at BETWEEN ? AND ?",
            (ENV, wall0, wall1),
        )[0][0]
        w.stop()
        return Idle(
            drift_s=drift,
            poll_s=poll,
            window_s=window,
            cpu_self_s=(own1 - own0) / TICKS,
            cpu_all_s=(own1 - own0 + reaped1 - reaped0 + kid_ticks) / TICKS,
            passes=int(passes),
            hwm_mb=hwm,
            rss_mb=rss,
            children=children,
        )

    def cleanup(self) -> None:
        for w in self.watches:
            with contextlib.suppress(Exception):
                w.stop()
        pid_file = self.state / ENV / "haproxy" / "haproxy.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            terminate(int(pid_file.read_text().split()[0]))
        # HAProxy workers of earlier configs, or a watch that would not stop: anything
        # still running with our state directory on its command line is ours.
        for pid in pids_with_arg(str(self.state)):
            terminate(pid)
        remove_containers([f"label={LABEL}"])


# --------------------------------------------------------------------------- report


def report_latency(samples: list[Sample], healthy: list[tuple[str, float, float]]) -> float | None:
    print("\n(a) Push -> first response of the new revision through HAProxy")
    print("    `reconcile watch` with its defaults (--poll 2, --drift-interval 60) on a local")
    print("    bare repository; a new connection to HAProxy every poll interval.")
    print(
        f"  {'push':>4}  {'release':<9} {'push->served':>12} {'failed polls':>12} "
        f"{'run':>5} {'load1':>5}"
    )
    for s in samples:
        print(
            f"  {s.n:>4}  {s.old + '->' + s.new:<9} {s.latency_s:11.2f}s {s.bad:>12} "
            f"{s.run_id if s.run_id is not None else '-':>5} {s.load1:5.1f}"
        )
    med_served = median([s.latency_s for s in samples])
    print(f"  median push->served: {med_served:.2f}s over {len(samples)} push(es)")

    print("\n    Container time-to-healthy: `docker run -d` (same image, env, --memory, --cpus;")
    print("    8080 published on a free 127.0.0.1 port) until GET /healthz answers 200")
    print("    (and through the Engine API, create + start, as the reconciler does)")
    print(f"  {'run':>4}  {'image':<15} {'docker run':>10} {'Engine API':>10}")
    for i, (rev, took, took_api) in enumerate(healthy, 1):
        print(f"  {i:>4}  sample-app:{rev:<4} {took:9.2f}s {took_api:9.2f}s")
    med_healthy = median([t for _, t, _a in healthy])
    med_api = median([a for _, _t, a in healthy])
    print(
        f"  median time-to-healthy: {med_healthy:.2f}s with docker run, {med_api:.2f}s "
        f"through the API, over {len(healthy)} run(s)"
    )
    if samples and healthy:
        over = med_served - med_healthy
        verdict = "met" if over <= GOAL_OVERHEAD_S else "NOT met"
        print(
            f"\n  median(push->served) - median(time-to-healthy) = {over:.2f}s "
            f"(goal: at most {GOAL_OVERHEAD_S:g}s: {verdict})"
        )
        print(
            f"  median(push->served) - median(time-to-healthy through the API) = "
            f"{med_served - med_api:.2f}s"
        )
        return over
    return None


def report_pass(bench: Bench, s: Sample) -> None:
    """Where the time of one push went, from the history database."""
    if s.run_id is None:
        return
    started, finished, status = bench.run_row(s.run_id)
    steps = bench.steps(s.run_id)
    served = s.pushed_wall + s.latency_s
    step_sum = sum(float(x["duration_s"]) for x in steps)
    print(
        f"\n  Where the time of push {s.n} went (the median one; history run {s.run_id}, {status}):"
    )
    print(
        f"    push returned -> run recorded      {started - s.pushed_wall:6.2f}s  (push "
        "noticed, commit read and validated, lock, observe Docker and HAProxy, plan)"
    )
    for x in steps:
        print(
            f"    [{x['step']:>2}] {x['kind']:<17} {float(x['duration_s']):8.2f}s  "
            f"{x['description']}"
        )
    print(f"    sum of steps                       {step_sum:6.2f}s")
    print(
        f"    health gate + bookkeeping          {finished - started - step_sum:6.2f}s  "
        "(in the run, outside any step: the gate of the new containers)"
    )
    print(f"    run recorded -> first new response {served - started:6.2f}s")
    print(
        f"    first new response -> run finished {finished - served:6.2f}s  (drain, remove "
        "the old servers and containers: after traffic moved)"
    )
    print(f"\n  `reconcile history --run {s.run_id} --state-dir {bench.state}`:")
    for line in bench.history_text(s.run_id).rstrip().splitlines():
        print(f"    {line}")


def report_idle(results: list[Idle], serving_hwm: float | None) -> None:
    print("\n(b) Idle cost: a fresh `reconcile watch`, nothing to change, after its first pass")
    print(
        f"  {'--poll':>6} {'--drift':>7} {'window':>7} {'passes':>6} {'CPU s':>6} "
        f"{'% core':>7} {'+children':>9} {'peak RSS':>9} {'RSS now':>8}"
    )
    for r in results:
        pct = 100 * r.cpu_self_s / r.window_s
        pct_all = 100 * r.cpu_all_s / r.window_s
        print(
            f"  {r.poll_s:>6g} {r.drift_s:>7g} {r.window_s:6.1f}s {r.passes:>6} "
            f"{r.cpu_self_s:6.2f} {pct:6.2f}% {pct_all:8.2f}% {r.hwm_mb:6.1f} MiB "
            f"{r.rss_mb:5.1f} MiB"
        )
    for r in results:
        for c in r.children:
            print(f"    child of the watch (--drift-interval {r.drift_s:g}): {c}")
    if results:
        d = results[0]
        pct = 100 * d.cpu_self_s / d.window_s
        print(
            f"\n  defaults: {pct:.2f}% of one core (goal < {GOAL_CPU_PCT:g}%: "
            f"{'met' if pct < GOAL_CPU_PCT else 'NOT met'}), peak RSS {d.hwm_mb:.1f} MiB "
            f"(goal < {GOAL_RSS_MB:g} MB: {'met' if d.hwm_mb < GOAL_RSS_MB else 'NOT met'})"
        )
    if serving_hwm is not None:
        print(f"  peak RSS of the watch that applied the pushes in (a): {serving_hwm:.1f} MiB")
    print("  CPU: utime+stime of the watch process over the window; +children adds its child")
    print("  processes (GitPython's git cat-file). Docker's and HAProxy's own work for the")
    print("  drift passes is not counted. Peak RSS: VmHWM, the whole life of the process.")


# --------------------------------------------------------------------------- main


def check_tools() -> None:
    missing = [t for t in ("docker", "git") if shutil.which(t) is None]
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        missing.append("haproxy")
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)}")
    for rev in REVISIONS:
        if run_cmd(["docker", "image", "inspect", f"sample-app:{rev}"], check=False).returncode:
            sys.exit(f"image sample-app:{rev} is missing: run sample-repo/app/build.sh")
    leftover = run_cmd(["docker", "ps", "-aq", "--filter", f"label={LABEL}"]).stdout.split()
    if leftover:
        sys.exit(
            f"{len(leftover)} container(s) labelled {LABEL} exist already (another run of "
            "this benchmark, or a leftover): names would clash. Remove them with\n"
            f"  docker rm -f $(docker ps -aq --filter label={LABEL})"
        )


def measure_latency(
    bench: Bench, args: argparse.Namespace
) -> tuple[list[Sample], list[tuple[str, float]], float | None]:
    w = Watch(bench, poll=2.0, drift=60.0, tag="latency")
    bench.watches.append(w)
    sha = bench.head()
    bench.push()
    log(f"first deploy of web v1 by the watcher (HAProxy on 127.0.0.1:{bench.port}) ...")
    run_id, status = bench.wait_run_done(sha, w, args.timeout)
    if status != "ok":
        raise RuntimeError(f"the first deploy failed (run {run_id}: {status}); see {w.log_path}")
    poll_until(bench.port, "/", bench.serving("v1"), time.perf_counter(), 0.1, 30)
    samples: list[Sample] = []
    healthy: list[tuple[str, float, float]] = []
    current = "v1"
    for n in range(1, max(args.pushes, args.healthy_runs) + 1):
        new = REVISIONS[n % len(REVISIONS)]
        if n <= args.healthy_runs:  # interleaved, so both see the same background load
            took = bench.time_to_healthy(new, n, args.interval, args.timeout)
            took_api = bench.time_to_healthy_api(new, n, args.interval, args.timeout)
            healthy.append((new, took, took_api))
            log(
                f"time-to-healthy {n}: sample-app:{new} {took:.2f}s (docker run), "
                f"{took_api:.2f}s (Engine API)"
            )
        if n > args.pushes:
            continue
        sha = bench.commit(new)  # not timed
        poll_until(bench.port, "/", bench.serving(current), time.perf_counter(), 0.1, 30)
        load1 = os.getloadavg()[0]
        t0, wall = bench.push()
        took, bad = poll_until(bench.port, "/", bench.serving(new), t0, args.interval, args.timeout)
        s = Sample(n, current, new, sha, wall, took, bad, load1=load1)
        s.run_id, status = bench.wait_run_done(sha, w, args.timeout)
        samples.append(s)
        log(
            f"push {n}: web {current} -> {new}: first {new} response after {took:.2f}s "
            f"(run {s.run_id}: {status}; polls without 2xx: {bad})"
        )
        current = new
    w.check_alive()
    hwm = status_kb(w.pid, "VmHWM") / 1024
    if w.stop() != 0:
        log(f"WARNING: the watch exited {w.proc.returncode}; see {w.log_path}")
    return samples, healthy, hwm


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pushes", type=int, default=5, help="releases pushed (default 5)")
    ap.add_argument(
        "--healthy-runs", type=int, default=5, help="time-to-healthy samples (default 5)"
    )
    ap.add_argument(
        "--interval",
        type=float,
        default=0.02,
        help="seconds between polls of HAProxy and /healthz (default 0.02)",
    )
    ap.add_argument(
        "--idle-seconds",
        type=float,
        default=60.0,
        help="idle window per watch configuration (default 60; 0 skips (b))",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds after the idle watch's first pass before the window",
    )
    ap.add_argument(
        "--compare-drift",
        type=float,
        default=10.0,
        help="also measure idle with this --drift-interval (default 10; 0 skips)",
    )
    ap.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="web replicas (default: sample-repo's web.yaml, 2)",
    )
    ap.add_argument(
        "--timeout", type=float, default=120.0, help="limit of each wait, s (default 120)"
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (watch logs, manifests, history)",
    )
    args = ap.parse_args()
    check_tools()
    # Both unwind like Ctrl-C so the cleanup runs (SIGINT explicitly: a shell starts
    # background jobs with SIGINT ignored).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="watch-bench-"))
    bench = Bench(root, args.replicas)
    log(
        f"work dir {root}; reconcile command: {' '.join(bench.cmd)}; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    try:
        bench.setup()
        samples, healthy, serving_hwm = measure_latency(bench, args)
        report_latency(samples, healthy)
        if samples:
            mid = sorted(samples, key=lambda s: s.latency_s)[len(samples) // 2]
            report_pass(bench, mid)
        sys.stdout.flush()
        idle: list[Idle] = []
        if args.idle_seconds > 0:
            drifts = [60.0] + ([args.compare_drift] if args.compare_drift > 0 else [])
            for drift in drifts:
                idle.append(
                    bench.idle(
                        poll=2.0,
                        drift=drift,
                        seconds=args.idle_seconds,
                        settle=args.settle,
                        timeout=args.timeout,
                    )
                )
            report_idle(idle, serving_hwm)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        try:
            bench.cleanup()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if args.keep:
                log(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
