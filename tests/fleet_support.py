"""A manifests repository for a fleet of simulated SSH hosts (hosts_support): app hosts
running one service `web` behind an HAProxy on its own LB host, all reached over SSH
only. Used by tests/integration/test_ssh_hosts.py and bench/hosts_bench.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hosts_support import SimHost, SimHosts
from repo_support import commit, git

from reconciler import identity
from reconciler.cli import main
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths

HEADER = "apiVersion: reconciler/v1\n"


def _ssh(
    sim: SimHosts, h: SimHost, known_hosts: Path | None = None, checking: str | None = None
) -> dict[str, Any]:
    return {
        "ssh": {
            "user": "root",
            "key": str(sim.key),
            "known_hosts": str(known_hosts or sim.known_hosts),
            "docker_socket": h.docker_socket,
            "state_dir": h.state_dir,
            **({"host_key_checking": checking} if checking else {}),
        }
    }


@dataclass
class Fleet:
    """One environment on simulated hosts: ``apps`` run web, ``lb`` (and ``extra_lbs``)
    run HAProxy: one LoadBalancer on every LB host, its frontend bound to ``bind``
    (default ``<lb address>:<port>``; give ``":<port>"`` to several LB hosts)."""

    root: Path
    sim: SimHosts
    apps: list[SimHost]
    lb: SimHost
    env: str = field(default_factory=lambda: f"ssh{uuid.uuid4().hex[:6]}")
    port: int = 8080
    image: str = "sample-app"
    revisions: list[tuple[str, int]] = field(default_factory=lambda: [("v1", 100)])
    rollout: dict[str, Any] = field(default_factory=dict)
    known_hosts: dict[str, Path] = field(default_factory=dict)  # host -> other file
    host_key_checking: dict[str, str] = field(default_factory=dict)  # host -> mode
    greeting: str = "hello from the fleet"
    inventory_extra: list[SimHost] = field(default_factory=list)
    frontends_extra: list[dict[str, Any]] = field(default_factory=list)
    extra_lbs: list[SimHost] = field(default_factory=list)
    bind: str = ""
    # the Inventory's settings of this environment, e.g. {"mode": "etcd", "etcd": {...}}
    coordination: dict[str, Any] = field(default_factory=dict)
    canary: dict[str, Any] = field(default_factory=dict)  # of the last release, if any

    @property
    def lbs(self) -> list[SimHost]:
        return [self.lb, *self.extra_lbs]

    def __post_init__(self) -> None:
        self.repo = self.root / "manifests"
        self.repo.mkdir(parents=True)
        self.state = self.root / "state"
        git(self.repo, "init", "-q", "-b", "main")
        self.write("initial fleet")

    # ---------------------------------------------------------------- manifests

    def write_policy(self) -> Path:
        """The operator policy of the fleet: the simulated hosts' key and known_hosts
        (a host in ``known_hosts`` with its own file, one in ``host_key_checking`` with its
        mode and pinned address), as the manifests also name them."""
        address = {h.name: h.address for h in self.sim.hosts}
        hosts: dict[str, dict[str, str]] = {}
        for name, path in self.known_hosts.items():
            hosts.setdefault(name, {})["known_hosts"] = str(path)
        for name, mode in self.host_key_checking.items():
            # the operator allows trust on first use per host, its address pinned
            hosts.setdefault(name, {}).update(host_key_checking=mode, address=address[name])
        policy = {
            "secrets": {"env_prefix": "STAGING_"},
            "ssh": {"key": str(self.sim.key), "known_hosts": str(self.sim.known_hosts),
                    "hosts": hosts},
        }
        path = self.root / "policy.yaml"
        path.write_text(json.dumps(policy) + "\n")
        return path

    def write(self, message: str) -> str:
        self.policy = self.write_policy()
        hosts = {h.name: h for h in [*self.apps, *self.inventory_extra]}
        inventory = [
            {
                "name": h.name,
                "address": h.address,
                "roles": ["app"],
                "connection": _ssh(
                    self.sim, h, self.known_hosts.get(h.name), self.host_key_checking.get(h.name)
                ),
            }
            for h in sorted(hosts.values(), key=lambda h: h.index)
        ]
        inventory += [
            {
                "name": lb.name,
                "address": lb.address,
                "roles": ["lb"],
                "connection": _ssh(
                    self.sim,
                    lb,
                    self.known_hosts.get(lb.name),
                    self.host_key_checking.get(lb.name),
                ),
            }
            for lb in self.lbs
        ]
        files = {
            "inventory.yaml": {
                "kind": "Inventory",
                "hosts": inventory,
                **({"environments": {self.env: self.coordination}} if self.coordination else {}),
            },
            "loadbalancer.yaml": {
                "kind": "LoadBalancer",
                "name": "edge",
                "hosts": [lb.name for lb in self.lbs],
                "frontends": [
                    {
                        "name": "http",
                        "bind": self.bind or f"{self.lb.address}:{self.port}",
                        "default_service": "web",
                    },
                    *self.frontends_extra,
                ],
            },
            "services/web.yaml": {
                "kind": "Service",
                "name": "web",
                "image": self.image,
                "releases": [
                    {
                        "revision": r,
                        "weight": w,
                        **({"canary": self.canary} if self.canary and i == len(self.revisions) - 1
                           else {}),
                    }
                    for i, (r, w) in enumerate(self.revisions)
                ],
                "replicas": 1,
                "hosts": [h.name for h in self.apps],
                "port": 8080,
                "health": {"http": "/healthz", "interval": "500ms", "timeout": "1s", "retries": 3},
                "env": {"GREETING": self.greeting},
                "stop_grace_period": "2s",
                "loadbalancing": {"drain_timeout": "5s"},
            },
            f"environments/{self.env}.yaml": {
                "kind": "Environment",
                "name": self.env,
                **({"rollout": self.rollout} if self.rollout else {}),
            },
        }
        for rel, doc in files.items():
            path = self.repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            # JSON is YAML: no quoting surprises in generated manifests.
            path.write_text(HEADER + "\n".join(f"{k}: {json.dumps(v)}" for k, v in doc.items()) + "\n")
        return commit(self.repo, message)

    # ---------------------------------------------------------------- CLI

    def cli(self, *args: str) -> tuple[int, str]:
        r = CliRunner().invoke(
            main,
            [*args, "--repo", str(self.repo), "--env", self.env, "--state-dir", str(self.state),
             "--policy", str(self.policy)],
        )
        if r.exception and not isinstance(r.exception, SystemExit):
            raise r.exception
        return r.exit_code, r.stdout + r.stderr

    def apply(self, *extra: str) -> tuple[int, str]:
        return self.cli("apply", "--health-timeout", "15", *extra)

    # ---------------------------------------------------------------- world

    @property
    def url(self) -> str:
        return self.url_of(self.lb)

    def url_of(self, lb: SimHost) -> str:
        return f"http://{lb.address}:{self.port}/"

    def containers(self, host: SimHost) -> list[Any]:
        """This environment's containers on ``host``, read from its own engine directly."""
        return host.docker().containers.list(
            all=True, filters={"label": f"{identity.ENVIRONMENT}={self.env}"}
        )

    def revisions_on(self, host: SimHost) -> list[str]:
        return sorted(c.labels[identity.REVISION] for c in self.containers(host))

    def haproxy(self, lb: SimHost | None = None) -> HAProxy:
        """The HAProxy of the LB host ``lb`` (default: ``self.lb``), through its sockets
        (same filesystem as this machine)."""
        return HAProxy(HAProxyPaths.embedded(Path((lb or self.lb).state_dir), self.env))

    def haproxy_dir(self, lb: SimHost | None = None) -> Path:
        return Path((lb or self.lb).state_dir) / self.env / "haproxy"

    def haproxy_config(self, lb: SimHost | None = None) -> str:
        """The LB host's installed haproxy.cfg; fails when none is installed (so that
        ``"h3." not in fleet.haproxy_config()`` cannot pass on a missing file)."""
        path = self.haproxy_dir(lb) / "haproxy.cfg"
        assert path.is_file(), f"no HAProxy config installed on the LB host: {path}"
        text = path.read_text()
        assert "backend " in text, f"{path} has no backend:\n{text}"
        return text

    def cleanup(self) -> None:
        """Stop the LB hosts' HAProxy (same PID namespace as ours) and the containers."""
        for lb in self.lbs:
            pid_file = self.haproxy_dir(lb) / "haproxy.pid"
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
                    os.kill(int(pid_file.read_text().split()[0]), 15)
        for h in {h.name: h for h in [*self.apps, *self.inventory_extra]}.values():
            for c in self.containers(h):
                c.remove(force=True)


STEP = re.compile(r"^\s+\[\s*(\d+)\] (\w+)\s+([\w-]+): (.*)$", re.M)


def steps(output: str) -> list[tuple[int, str, str, str]]:
    """(step, status, host, what) of each step line of `reconcile apply`."""
    return [(int(n), status, host, text) for n, status, host, text in STEP.findall(output)]

