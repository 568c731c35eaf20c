"""Where an HAProxy keeps its files.

The embedded HAProxy of an environment lives under ``<state dir>/<environment>/haproxy``
and is started by the reconciler. An existing HAProxy (``external``) keeps its own config
and socket paths, given by the operator; it must run in master-worker mode with a master
CLI socket, and is never started by the reconciler. The reconciler's own files (last good
config, server state) go beside the config either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HAProxyPaths:
    config: Path
    stats_socket: Path
    master_socket: Path
    managed: bool = True  # True: the reconciler starts (and owns) this HAProxy

    @classmethod
    def embedded(cls, state_dir: Path, environment: str) -> HAProxyPaths:
        root = state_dir / environment / "haproxy"
        return cls(root / "haproxy.cfg", root / "admin.sock", root / "master.sock")

    @classmethod
    def external(cls, config: Path, stats_socket: Path, master_socket: Path) -> HAProxyPaths:
        return cls(config, stats_socket, master_socket, managed=False)

    @property
    def root(self) -> Path:
        return self.config.parent

    @property
    def last_good(self) -> Path:
        return self.config.with_name(self.config.name + ".last-good")

    @property
    def pid_file(self) -> Path:
        return self.root / "haproxy.pid"

    @property
    def server_state(self) -> Path:
        return self.config.with_name(self.config.name + ".server-state")
