"""How an environment is driven: by one reconciler over its hosts' connections (``ssh``,
the default) or by replicas coordinated through an etcd cluster (``etcd``). Chosen per
environment by the Inventory (docs/manifests.md, "Inventory")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_LEASE_TTL_S = 5


@dataclass(frozen=True)
class EtcdSettings:
    """How replicas (and later agents) reach the etcd cluster of an environment:
    ``endpoints`` (``https://host:port``, tried in order, failing over), the TLS files
    on the machine that runs the reconciler (CA bundle, client certificate and its key:
    paths only, never their contents) and the TTL of the leader's lease in seconds."""

    endpoints: tuple[str, ...]
    ca: str
    cert: str
    key: str
    lease_ttl: int = DEFAULT_LEASE_TTL_S
    agents: bool = False  # the hosts run agents: the leader publishes, they act


@dataclass(frozen=True)
class Coordination:
    """How the environment is driven: ``ssh`` (one reconciler drives every host over
    its connection, today's mode) or ``etcd`` (replicas elect a leader in ``etcd``)."""

    mode: Literal["ssh", "etcd"] = "ssh"
    etcd: EtcdSettings | None = None

    @property
    def agents(self) -> bool:
        """Whether the hosts are driven through their agents (etcd mode with agents)."""
        return self.mode == "etcd" and self.etcd is not None and self.etcd.agents
