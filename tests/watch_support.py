"""A `reconcile watch` subprocess for integration tests (test_watch, test_canary)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from deploy_support import Deployment, free_port
from repo_support import commit, git


class Watch:
    """A `reconcile watch` subprocess following ``dep``'s repository through a bare remote."""

    def __init__(self, dep: Deployment, *extra: str, drift: float = 3.0,
                 env: dict[str, str] | None = None) -> None:
        self.dep = dep
        self.bare = dep.root / f"remote-{len(extra)}.git"
        if not self.bare.exists():
            git(dep.root, "clone", "-q", "--bare", str(dep.repo), str(self.bare))
            git(dep.repo, "remote", "add", "origin", str(self.bare))
        self.metrics_port = free_port()
        # The status page's default port is one for the whole machine: tests (and other
        # runs at the same time) ask for it explicitly, with --ui-addr.
        ui = [] if "--ui-addr" in extra else ["--ui-addr", "off"]
        self.log = (dep.root / f"watch-{self.metrics_port}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", "--repo", str(self.bare),
             "--branch", "main", "--env", dep.env, "--state-dir", str(dep.state),
             "--poll", "1", "--drift-interval", str(drift), "--health-timeout", "20",
             "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--log-format", "json",
             *ui, *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def push(self, message: str) -> tuple[str, float]:
        sha = commit(self.dep.repo, message)
        git(self.dep.repo, "push", "-q", "origin", "HEAD:main")
        return sha, time.monotonic()

    def metrics(self) -> str:
        """The metrics text; "" while the watcher is still starting."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def healthz(self) -> int:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status

    def logs(self) -> list[dict[str, object]]:
        if not self.log.closed:
            self.log.flush()
        lines = (self.dep.root / f"watch-{self.metrics_port}.log").read_text().splitlines()
        return [json.loads(x) for x in lines if x.startswith("{")]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        self.log.close()
        return self.proc.returncode
