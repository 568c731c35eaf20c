"""A deployment under test: a scratch manifests repository, its own environment name,
state directory and frontend port, driven through the real CLI against the real Docker
engine and a real HAProxy. Cleans up containers and HAProxy afterwards."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from click.testing import CliRunner
from repo_support import commit, edit, scratch_repo

from reconciler import identity, instance
from reconciler.cli import main
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deployment:
    root: Path
    client: docker.DockerClient
    env: str = field(default_factory=lambda: f"it{uuid.uuid4().hex[:6]}")
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.repo = scratch_repo(self.root, rename_env={"staging": self.env})
        self.state = self.root / "state"
        self.edit("environments/staging.yaml", '"127.0.0.1:8081"', f'"127.0.0.1:{self.port}"',
                  message="test port")
        self.haproxy = HAProxy(HAProxyPaths.embedded(self.state, self.env))

    # ---------------------------------------------------------------- git

    def edit(self, rel: str, old: str, new: str, message: str = "edit") -> str:
        edit(self.repo, rel, old, new)
        return commit(self.repo, message)

    def write(self, rel: str, text: str, message: str = "write") -> str:
        (self.repo / rel).write_text(text)
        return commit(self.repo, message)

    # ---------------------------------------------------------------- CLI

    def cli(self, *args: str, repo: bool = True) -> tuple[int, str]:
        where = ["--repo", str(self.repo)] if repo else []
        r = CliRunner().invoke(main, [*args, *where, "--env", self.env,
                                      "--state-dir", str(self.state)])
        if r.exception and not isinstance(r.exception, SystemExit):
            raise r.exception
        return r.exit_code, r.stdout + r.stderr

    def plan(self) -> tuple[int, dict[str, Any]]:
        code, out = self.cli("plan", "-o", "json")
        assert code in (0, 2), out
        return code, json.loads(out[out.index("{"):])

    def apply(self) -> tuple[int, str]:
        return self.cli("apply", "--health-timeout", "20")

    # ---------------------------------------------------------------- world

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str = "/", host: str | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.url(path), headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def reloads(self) -> int:
        return self.haproxy.procs().reloads

    def containers(self, service: str | None = None) -> list[Any]:
        """This deployment's containers: its environment's, of its own reconciler
        instance once one is recorded in its state dir."""
        labels = [f"{identity.ENVIRONMENT}={self.env}"]
        if (self.state / instance.FILE).exists():
            name = instance.resolve(self.state, None, create=False).name
            labels.append(f"{identity.INSTANCE}={name}")
        if service:
            labels.append(f"{identity.SERVICE}={service}")
        # ignore_removed: a container the reconciler removes between the list and its
        # inspect is simply not there (not a 404 out of the test helper)
        return self.client.containers.list(
            all=True, filters={"label": labels}, ignore_removed=True)

    def revisions(self, service: str) -> list[str]:
        return sorted(c.labels[identity.REVISION] for c in self.containers(service))

    def cleanup(self) -> None:
        self.haproxy.stop()
        for c in self.containers():
            c.remove(force=True)

    def four_runs(self) -> dict[str, Any]:
        """Plan shows changes; apply; apply again changes nothing (no reload either);
        plan shows nothing. Returns the first plan."""
        code, first = self.plan()
        assert code == 2 and first["actions"], first
        code, out = self.apply()
        assert code == 0, out
        reloads = self.reloads()
        code, out = self.apply()
        assert code == 0 and "No changes" in out, out
        assert self.reloads() == reloads
        code, again = self.plan()
        assert code == 0 and again["actions"] == [], again
        return first


def wait_for(cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
