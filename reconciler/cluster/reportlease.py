"""The lease an agent's report is bound to, so a dead agent's report expires with it."""

from __future__ import annotations

import time

from reconciler.cluster.etcd import Etcd


class ReportLease:
    """An agent's report lease of ``ttl_s`` seconds: ``id`` is 0 until first granted."""

    def __init__(self, client: Etcd, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.id = 0
        self._renewed = 0.0

    def renew(self) -> bool:
        """Keep the lease alive (at most every third of its TTL); True when it had to be
        granted anew (a report bound to the old one is gone: write it again).
        Raises EtcdUnavailable when etcd does not answer."""
        now = time.monotonic()
        if self.id and now - self._renewed < self.ttl_s / 3:
            return False
        alive = bool(self.id) and self.client.keepalive(self.id) > 0
        if not alive:
            self.id = self.client.grant(self.ttl_s)
        self._renewed = now
        return not alive
