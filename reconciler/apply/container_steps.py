"""The container steps of a run: start, health gate, remove; and the undo of a
failed service's starts.

A container started in this run is gated (health checked) before the next step of
another kind, all pending ones in parallel; one that fails its gate fails its service as
a whole, and the run then removes every container it started for that service, on every
host (``undo_starts``). A container an earlier, maybe interrupted, pass started is gated
when its server is added or pointed at it (``gated_address``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from reconciler import identity
from reconciler.apply.containers import ContainerError, Started, health_deadline
from reconciler.apply.engines import Engines
from reconciler.apply.results import Ledger
from reconciler.errors import ReconcilerError
from reconciler.health import NO_HEALTH
from reconciler.model import DesiredState, HealthCheck, ObservedState
from reconciler.plan.actions import (
    AddServer,
    RemoveContainer,
    RepointServer,
    StartContainer,
)


class ContainerSteps:
    """Runs the container steps of one run on ``engines``; records in ``ledger``."""

    def __init__(
        self,
        desired: DesiredState,
        observed: ObservedState,
        engines: Engines,
        ledger: Ledger,
        health_min_s: float,
    ) -> None:
        self.desired = desired
        self.engines = engines
        self.ledger = ledger
        self.health_min_s = health_min_s
        self.address = {h.name: h.address for h in desired.hosts}
        self.health = {s.name: s.health for s in desired.services}
        self.secret_names = {
            s.name: sorted({ref.name for r in s.releases for ref in r.spec.secrets})
            for s in desired.services
        }
        # (app host, container name) -> published (address, port), from live state + starts
        self.published: dict[tuple[str, str], tuple[str, int]] = {
            (h.name, c.name): c.published
            for h in observed.hosts
            for c in h.containers
            if c.published
        }
        self.pickers: dict[str, Callable[[str], int]] = {}  # host -> its port picker
        self.started: dict[str, list[tuple[str, Started]]] = {}  # service -> (host, container)
        self.pending: list[tuple[StartContainer, Started]] = []  # started, not yet gated
        self.gated: set[tuple[str, str]] = set()  # (host, container) that passed the gate

    def _port_picker(self, host: str) -> Callable[[str], int]:
        with self.ledger.lock:
            if host not in self.pickers:
                used = [port for (h, _), (_, port) in self.published.items() if h == host]
                self.pickers[host] = self.engines.port_picker(host, used)
            return self.pickers[host]

    # ------------------------------------------------------------------ steps

    def start(self, a: StartContainer) -> str:
        assert a.spec is not None and a.service is not None
        if not a.image_id:
            raise ContainerError(f"image {a.spec.image} is not on host {a.host}")
        labels = identity.container_labels(
            self.desired.environment,
            a.service,
            a.revision,
            a.config_hash,
            a.replica,
            self.desired.commit,
            a.spec,
            a.image_id,
            self.desired.instance.name,
            self.desired.instance.label_key,
        )
        pick_port = self._port_picker(a.host)
        started = self.engines.start(
            a.host,
            name=a.name,
            labels=labels,
            spec=a.spec,
            image_id=a.image_id,
            address=self.address[a.host],
            pick_port=pick_port,
        )
        with self.ledger.lock:
            if self.ledger.failed(a.service):  # failed on another host meanwhile
                self.engines.remove(a.host, started.name, grace_s=1)
                return "removed again: the service failed on another host"
            self.started.setdefault(a.service, []).append((a.host, started))
            self.published[(a.host, a.name)] = (started.address, started.port)
            self.pending.append((a, started))
        return f"published on {started.address}:{started.port}"

    def remove(self, a: RemoveContainer) -> str | None:
        gone = self.engines.remove(a.host, a.name, a.grace_s)
        return None if gone else "already gone"

    # ------------------------------------------------------------------ health gate

    def gate(self) -> list[tuple[str, str]]:
        """Wait, in parallel, until every container started since the last gate is
        healthy; (service, why) of each one that is not, in plan order (the caller fails
        the service and undoes its starts)."""
        pending, self.pending = self.pending, []
        if not pending:
            return []

        def wait(item: tuple[StartContainer, Started]) -> str | None:
            a, s = item
            assert a.spec is not None
            try:
                self._wait_healthy(a.host, s.name, a.spec.health, (s.address, s.port), a.service)
            except ReconcilerError as exc:
                return f"host {a.host}: {exc}"
            return None

        with ThreadPoolExecutor(max_workers=min(32, len(pending))) as pool:
            outcomes = list(pool.map(wait, pending))
        failed: list[tuple[str, str]] = []
        for (a, s), error in zip(pending, outcomes, strict=True):
            if error is None:
                self.gated.add((a.host, s.name))
            elif a.service:
                failed.append((a.service, error))
        return failed

    def _wait_healthy(
        self,
        host: str,
        name: str,
        health: HealthCheck,
        where: tuple[str, int],
        service: str | None,
    ) -> None:
        self.engines.wait_healthy(
            host,
            name,
            health,
            where[0],
            where[1],
            health_deadline(health, self.health_min_s),
            self.secret_names.get(service or "", ()),
        )

    def gated_address(self, a: AddServer | RepointServer) -> tuple[str, int]:
        """Where the server's container answers, once it passed its health gate (one
        started by an earlier, maybe interrupted, pass is gated here before it gets
        traffic; an unhealthy one is removed like a container of this pass)."""
        where = self.published.get((a.app_host, a.container))
        if where is None:
            raise ContainerError(
                f"container {a.container} on {a.app_host} has no published port; it is not running"
            )
        if (a.app_host, a.container) not in self.gated:
            health = self.health.get(a.service or "", NO_HEALTH)
            try:
                self._wait_healthy(a.app_host, a.container, health, where, a.service)
            except ContainerError:
                self.engines.remove(a.app_host, a.container, grace_s=1)
                raise
            with self.ledger.lock:
                self.gated.add((a.app_host, a.container))
        return where

    # ------------------------------------------------------------------ undo

    def undo_starts(self, service: str) -> list[tuple[str, str]]:
        """Remove the containers this run started for ``service`` (on every host): the
        old release keeps serving. The (host, container) removed, for their servers to
        leave the next config too. Called under the ledger's lock."""
        undone = []
        for host, started in self.started.pop(service, []):
            self.engines.remove(host, started.name, grace_s=1)
            undone.append((host, started.name))
        self.pending = [(a, s) for a, s in self.pending if a.service != service]
        return undone
