"""Helpers shared by the benchmarks: commands, the Docker engine, processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_cmd(
    cmd: list[str], *, timeout: float = 60, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def wait_engine(timeout: float) -> bool:
    """True when the Docker engine answers (other work on this machine may restart it)."""
    deadline = time.monotonic() + timeout
    while True:
        if run_cmd(["docker", "version"], timeout=30, check=False).returncode == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def remove_containers(filters: list[str]) -> None:
    """Remove every container matching the filters; checked again, since a removal the
    engine did not finish (it was being restarted) would leave them behind."""
    args = [a for f in filters for a in ("--filter", f)]
    for _ in range(3):
        if not wait_engine(60):
            break
        ps = run_cmd(["docker", "ps", "-aq", *args], timeout=60, check=False)
        ids = ps.stdout.split()
        if ps.returncode == 0 and not ids:
            return
        if ids:
            run_cmd(["docker", "rm", "-f", *ids], timeout=120, check=False)
        time.sleep(1)
    log(f"WARNING: containers may be left behind: docker ps -a --filter {' '.join(filters)}")


def terminate(pid: int, grace_s: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def pids_with_arg(needle: str) -> list[int]:
    """Processes (not this one) whose command line contains ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes().decode("utf-8", "replace"):
                found.append(int(entry.name))
    return found
