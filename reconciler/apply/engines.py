"""The app hosts' container engines as the container steps need them.

``Engines`` is what ``reconciler.apply.container_steps`` asks of the hosts: start a
container, wait for its health, remove it, get an image, pick ports. ``DockerEngines``
does it with each host's Docker engine over its connection (``reconciler.apply.containers``
and ``reconciler.apply.images``); ``tests/fakes.py`` has an in-memory one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from reconciler.apply.containers import (
    Started,
    create_and_start,
    free_port,
    remote_port_picker,
    stop_and_remove,
    wait_healthy,
)
from reconciler.desired.policy import SecretRules
from reconciler.model import ContainerSpec, HealthCheck
from reconciler.redact import Redactor
from reconciler.transport.pool import Connections

if TYPE_CHECKING:
    import docker


class Engines(Protocol):
    """The container engines of the hosts, by host name. Failures raise
    ReconcilerError (ContainerError, ImageError) with a message for the operator."""

    def port_picker(self, host: str, used: Collection[int]) -> Callable[[str], int]:
        """Picks ports to publish on ``host`` (given an address), never one of ``used``."""
        ...

    def start(
        self,
        host: str,
        *,
        name: str,
        labels: dict[str, str],
        spec: ContainerSpec,
        image_id: str,
        address: str,
        pick_port: Callable[[str], int],
    ) -> Started:
        """Create and start a container publishing ``spec.port`` on ``address`` (a port
        from ``pick_port``). Raises ContainerError when it cannot (nothing left behind)."""
        ...

    def wait_healthy(
        self,
        host: str,
        name: str,
        health: HealthCheck,
        address: str,
        port: int,
        deadline_s: float,
        secret_names: Collection[str],
    ) -> None:
        """Return once the container is healthy; ContainerError (with the last health
        result and log lines, ``secret_names``' values blanked) when it is not by then."""
        ...

    def remove(self, host: str, name: str, grace_s: int) -> bool:
        """Stop (with ``grace_s``) and remove, keeping volumes; False if already gone."""
        ...


class DockerEngines:
    """``Engines`` through each host's Docker engine on its connection in ``conns``.
    Secrets are read within ``secret_rules``; what is read goes to ``redactor``."""

    def __init__(self, conns: Connections, secret_rules: SecretRules, redactor: Redactor) -> None:
        self.conns = conns
        self.secret_rules = secret_rules
        self.redactor = redactor

    def _client(self, host: str) -> docker.DockerClient:
        return self.conns.get(host).docker()

    def port_picker(self, host: str, used: Collection[int]) -> Callable[[str], int]:
        # A port of this machine is known free once bound; a remote host's is guessed
        # (and retried on a clash, see create_and_start).
        return free_port if self.conns.hosts[host].ssh is None else remote_port_picker(used)

    def start(
        self,
        host: str,
        *,
        name: str,
        labels: dict[str, str],
        spec: ContainerSpec,
        image_id: str,
        address: str,
        pick_port: Callable[[str], int],
    ) -> Started:
        return create_and_start(
            self._client(host),
            name=name,
            labels=labels,
            spec=spec,
            image_id=image_id,
            address=address,
            host=host,
            secret_rules=self.secret_rules,
            redactor=self.redactor,
            transport=self.conns.get(host),
            pick_port=pick_port,
        )

    def wait_healthy(
        self,
        host: str,
        name: str,
        health: HealthCheck,
        address: str,
        port: int,
        deadline_s: float,
        secret_names: Collection[str],
    ) -> None:
        wait_healthy(
            self._client(host),
            name,
            health,
            address,
            port,
            deadline_s,
            self.conns.get(host),
            self.redactor,
            secret_names,
        )

    def remove(self, host: str, name: str, grace_s: int) -> bool:
        return stop_and_remove(self._client(host), name, grace_s)
