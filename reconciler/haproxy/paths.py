"""Where the embedded HAProxy of an environment keeps its files (under the state dir)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HAProxyPaths:
    root: Path

    @classmethod
    def embedded(cls, state_dir: Path, environment: str) -> HAProxyPaths:
        return cls(state_dir / environment / "haproxy")

    @property
    def config(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def last_good(self) -> Path:
        return self.root / "haproxy.cfg.last-good"

    @property
    def stats_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.root / "master.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "haproxy.pid"

    @property
    def server_state(self) -> Path:
        return self.root / "server-state"
