"""The layout of the reconciler's keys in etcd (docs/operations.md, "etcd mode").

Every key of one environment of one reconciler instance lives under its prefix
``/reconciler/<instance>/<environment>/``, so several instances and environments share
a cluster without seeing each other's keys, and one range (or watch) covers all of an
environment. The instance is part of the prefix because replicas of one environment
must share it anyway: they adopt each other's containers only when their instance
names agree.

| key (under the prefix)     | value                       | bound to          |
|----------------------------|-----------------------------|-------------------|
| ``leader``                 | the leading replica's id    | the leader's lease|
| ``pool/<backend>``         | the backend's desired pool  | (none)            |
| ``lb/<loadbalancer>``      | what its LB hosts render    | (none)            |
| ``hosts/<host>/desired``   | the host's desired slice    | (none)            |
| ``hosts/<host>/report``    | what its LB agent applied   | the agent's lease |
| ``hosts/<host>/app-report``| what runs there, its health | the agent's lease |
| ``canary/<service>``       | its canary analysis state   | (none)            |
| ``applied``                | the last commit, held ones  | (none)            |

``pool/`` and ``lb/`` are written by the leader (``reconciler.cluster.publish``) and
read by the LB agents (``reconciler.agent.lb``); their values are
``reconciler.cluster.lbconfig``'s. ``hosts/<host>/desired`` is the app host's slice
(``reconciler.cluster.hostslice``), read by its app agent (``reconciler.agent.app``),
which writes ``app-report``; an LB agent writes ``report``. ``canary/`` and ``applied``
are the leader's, shared so that a replica that takes over goes on from them
(``reconciler.agent.leaderpass``, ``reconciler.cluster.shared``). Names are checked: a part
may not be empty or hold ``/`` (a host named ``a/b`` must not reach another host's keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reconciler.errors import ReconcilerError

ROOT = "/reconciler"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class KeyNameError(ReconcilerError):
    """A name that cannot be part of a key."""


def part(what: str, name: str) -> str:
    """``name`` when it can be one part of a key path; raises naming ``what``."""
    if not _PART.fullmatch(name):
        raise KeyNameError(
            f"{what} {name!r} cannot be part of an etcd key: use 1-128 letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Keys:
    """The keys of one environment of one reconciler instance."""

    instance: str
    environment: str

    def __post_init__(self) -> None:
        part("instance", self.instance)
        part("environment", self.environment)

    @property
    def prefix(self) -> str:
        """``/reconciler/<instance>/<environment>/``: every key of the environment."""
        return f"{ROOT}/{self.instance}/{self.environment}/"

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def pools(self) -> str:
        """The prefix of every backend's pool."""
        return self.prefix + "pool/"

    def pool(self, backend: str) -> str:
        return self.pools + part("backend", backend)

    @property
    def structures(self) -> str:
        """The prefix of every load balancer's structure."""
        return self.prefix + "lb/"

    def structure(self, loadbalancer: str) -> str:
        """What the LB hosts of ``loadbalancer`` render: frontends, routes, TLS bindings
        and each backend's options (everything of the config but its servers)."""
        return self.structures + part("load balancer", loadbalancer)

    @property
    def hosts(self) -> str:
        """The prefix of every host's keys."""
        return self.prefix + "hosts/"

    def desired(self, host: str) -> str:
        return f"{self.hosts}{part('host', host)}/desired"

    def report(self, host: str) -> str:
        """The LB agent's report."""
        return f"{self.hosts}{part('host', host)}/report"

    def app_report(self, host: str) -> str:
        """The app agent's report (a host may run both agents)."""
        return f"{self.hosts}{part('host', host)}/app-report"

    @property
    def canaries(self) -> str:
        """The prefix of every canary's analysis state (shared by the replicas)."""
        return self.prefix + "canary/"

    def canary(self, service: str) -> str:
        return self.canaries + part("service", service)

    @property
    def applied(self) -> str:
        """The commit the leader applied last and the services held at it (shared by
        the replicas: ``reconciler.cluster.shared``)."""
        return self.prefix + "applied"
