"""The app agent (``reconcile agent --role app``): keeps the containers of its own host
in line with the slice the leader publishes for it (``reconciler.cluster.hostslice``),
through the local Docker engine (no SSH from elsewhere).

The loop:

1. Read ``hosts/<host>/desired`` (one read, one revision).
2. Apply it: every container of the slice that does not exist is started (the slice's
   name, labels and image id, so it is the container an ``ssh`` pass would have made:
   each adopts the other's), one that exited or died is removed and started again
   (drift repair), and every running one is health checked as the executor's gate
   does; then the managed containers of the agent's instance and environment that the
   slice no longer has are stopped and removed.
3. Report under ``hosts/<host>/app-report``, bound to the agent's own lease: the slice's
   revision, its commit, and every managed container with its status, health and
   published address and port (the leader advances on it).
4. Watch the host's keys; read again on a change of the slice, and every
   ``resync_s`` anyway (a container killed by hand is started again).

Cut off from etcd (``EtcdUnavailable``) or given a slice it cannot read: the agent
logs why, keeps everything that runs (nothing is removed without a slice read from
etcd in this round), still restarts the containers of the last slice it read that
died, and tries again with backoff (0.25 s doubling to 5 s).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler import identity
from reconciler.agent.lb import backoff_s
from reconciler.apply.containers import (
    ContainerError,
    create_and_start,
    free_port,
    health_deadline,
    stop_and_remove,
    wait_healthy,
)
from reconciler.apply.images import ensure_image
from reconciler.cluster.etcd import Etcd, WatchCompacted
from reconciler.cluster.hostslice import (
    AppReport,
    HostSlice,
    ReportedContainer,
    SliceContainer,
    decode_slice,
    encode_app_report,
)
from reconciler.cluster.keys import Keys
from reconciler.cluster.lbconfig import LBConfigError
from reconciler.cluster.reportlease import ReportLease
from reconciler.desired.policy import SecretRules
from reconciler.errors import ReconcilerError
from reconciler.model import Host, Instance, ObservedContainer, Pairs
from reconciler.observe.docker import observe_host
from reconciler.redact import Redactor

if TYPE_CHECKING:
    import docker

log = logging.getLogger("reconciler.agent")


@dataclass(frozen=True)
class AppAgentConfig:
    keys: Keys
    host: str  # this app host's inventory name
    secret_rules: SecretRules
    resync_s: float = 5.0
    report_ttl_s: int = 10
    health_timeout_s: float = 30.0
    idle_s: float = 1.0  # a watch without events ends (and is renewed) after this long


class AppAgent:
    """The agent of one app host (see the module). ``engine``: the local Docker engine."""

    def __init__(self, cfg: AppAgentConfig, client: Etcd, engine: docker.DockerClient) -> None:
        self.cfg = cfg
        self.client = client
        self.engine = engine
        self.instance = Instance(name=cfg.keys.instance, adopt_unlabelled=False)
        self.redactor = Redactor()
        self.slice: HostSlice | None = None  # the last slice read
        self.revision = 0  # its mod revision
        self.healthy: set[str] = set()  # containers (by id) that passed their health check
        self.unhealthy: set[str] = set()  # containers (by id) that failed it
        self.errors: dict[str, str] = {}  # container name -> why it is not healthy
        self.error = ""  # why the last round failed
        self.ports: dict[str, int] = {}  # container name -> the port it last published
        self.lease = ReportLease(client, cfg.report_ttl_s)

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Keep the host in line until ``stop`` is set (see the module)."""
        failures = 0
        while not stop.is_set():
            try:
                store_revision = self.read()
            except ReconcilerError as exc:
                failures += 1
                delay = backoff_s(failures)
                log.warning("%s; the containers that run keep running; trying again in %.1fs",
                            exc, delay)
                self._apply_quietly(remove=False)
                if isinstance(exc, LBConfigError):  # etcd answers: say why in the report
                    with contextlib.suppress(ReconcilerError):
                        self.report(error=str(exc))
                stop.wait(delay)
                continue
            try:
                self.apply(remove=True)
                self.report()
                failures = 0
                self.follow(store_revision, stop)
            except WatchCompacted:
                continue
            except ReconcilerError as exc:
                failures += 1
                log.warning("%s; trying again", exc)
                stop.wait(backoff_s(failures))

    def read(self) -> int:
        """Read the slice; the store's revision. Raises EtcdUnavailable, or LBConfigError
        for a slice that cannot be read (the last one read stays)."""
        key = self.cfg.keys.desired(self.cfg.host)
        found = self.client.range(key)
        if not found.kvs:
            if self.slice is None:
                log.info("no slice published for host %s yet", self.cfg.host)
            self.slice, self.revision = None, found.revision
            return found.revision
        kv = found.kvs[0]
        value = decode_slice(key, kv.value)
        if value.host != self.cfg.host or value.environment != self.cfg.keys.environment:
            raise ReconcilerError(f"etcd key {key!r}: the slice is for host {value.host!r} "
                                  f"of {value.environment!r}; left alone")
        if kv.mod_revision != self.revision:
            log.info("slice revision %d (commit %s): %d container(s)", kv.mod_revision,
                     value.commit[:12], len(value.containers))
        self.slice, self.revision = value, kv.mod_revision
        return found.revision

    def follow(self, revision: int, stop: threading.Event) -> None:
        """Return when the host's slice changed past ``revision``, or after ``resync_s``;
        renews the report's lease meanwhile."""
        prefix = self.cfg.keys.desired(self.cfg.host)
        deadline = time.monotonic() + self.cfg.resync_s
        start = revision + 1
        while not stop.is_set() and time.monotonic() < deadline:
            for ev in self.client.watch(prefix, start_revision=start, idle_s=self.cfg.idle_s):
                start = ev.kv.mod_revision + 1
                if ev.kv.key == prefix:
                    return
            self.lease.renew()

    # ------------------------------------------------------------------ apply

    def _apply_quietly(self, remove: bool) -> None:
        try:
            self.apply(remove)
        except ReconcilerError as exc:
            log.warning("%s", exc)

    def apply(self, remove: bool) -> None:
        """Make the host run the last slice read: start what is missing or dead, check
        health, and (``remove``) remove the managed containers the slice does not have.
        Without a slice, nothing is removed."""
        value = self.slice
        if value is None:
            return
        have = {c.name: c for c in self._managed()}
        todo = [c for c in value.containers if c.name not in have
                or have[c.name].status in ("exited", "dead", "created")]
        # A container that failed its check is not checked again (the leader undoes it).
        checks = [c for c in value.containers if c not in todo
                  and have[c.name].id not in self.healthy | self.unhealthy
                  and have[c.name].status == "running"]
        work = [(c, have.get(c.name)) for c in todo] + [(c, have[c.name]) for c in checks]
        if work:
            with ThreadPoolExecutor(max_workers=min(8, len(work))) as pool:
                list(pool.map(lambda item: self._one(value, *item), work))
        if remove:
            for c in have.values():
                if c.name not in value.names():
                    self._remove(c)

    def _managed(self) -> list[ObservedContainer]:
        """The managed containers of this agent's instance and environment."""
        found = observe_host(self.cfg.host, self.engine, (), self.instance)
        env = self.cfg.keys.environment
        mine = [c for c in found.containers if c.label(identity.ENVIRONMENT) == env]
        self.ports.update({c.name: c.published[1] for c in mine if c.published})
        return mine

    def _one(self, value: HostSlice, c: SliceContainer, old: ObservedContainer | None) -> None:
        """Start ``c`` (again, when ``old`` died) or check the health of ``old``."""
        cid = ""
        try:
            if old is None or old.status != "running":
                if old is not None:
                    log.info("container %s is %s: starting it again", c.name, old.status)
                    stop_and_remove(self.engine, c.name, 1)
                where, cid = self._start(value, c)
            else:
                where, cid = old.published or (value.address, 0), old.id
            wait_healthy(self.engine, c.name, c.spec.health, where[0], where[1],
                         health_deadline(c.spec.health, self.cfg.health_timeout_s),
                         redactor=self.redactor, secret_names=[s.name for s in c.spec.secrets])
        except ReconcilerError as exc:
            self.errors[c.name] = self.redactor.scrub(str(exc)).splitlines()[0]
            log.warning("host %s: %s", self.cfg.host, self.errors[c.name])
            if cid:
                self.unhealthy.add(cid)
            return
        self.errors.pop(c.name, None)
        self.healthy.add(cid)

    def _start(self, value: HostSlice, c: SliceContainer) -> tuple[tuple[str, int], str]:
        self._ensure_image(c)
        started = create_and_start(
            self.engine, name=c.name, labels=dict(c.labels), spec=c.spec, image_id=c.image_id,
            address=value.address, host=self.cfg.host, secret_rules=self.cfg.secret_rules,
            redactor=self.redactor, pick_port=self._picker(c.name))
        log.info("started %s on %s:%d", c.name, started.address, started.port)
        return (started.address, started.port), started.id

    def _picker(self, name: str) -> Callable[[str], int]:
        """The port ``name`` published before when it is free (its server in the
        published pools stays right), else any free one."""
        before = [self.ports.get(name, 0)]

        def pick(address: str) -> int:
            port = before.pop() if before else 0
            if port:
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                        # as Docker's listener will: old connections in TIME_WAIT on
                        # the port do not make it taken
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        s.bind((address, port))
                    return port
                except OSError:
                    pass
            return free_port(address)

        return pick

    def pull(self, refs: Iterable[str]) -> Pairs:
        """(reference, image id) of each of ``refs``, pulled when missing (those that
        cannot be had are logged and left out)."""
        import docker.errors

        out = []
        for ref in sorted(set(refs)):
            try:
                try:
                    out.append((ref, str(self.engine.images.get(ref).id)))
                    continue
                except docker.errors.ImageNotFound:
                    pass
                ensure_image(Host(self.cfg.host, "127.0.0.1", ("app",)), self.engine, ref)
                out.append((ref, str(self.engine.images.get(ref).id)))
            except (ReconcilerError, docker.errors.DockerException, OSError) as exc:
                log.warning("host %s: image %s: %s", self.cfg.host, ref, exc)
        return tuple(out)

    def _ensure_image(self, c: SliceContainer) -> None:
        import docker.errors

        try:
            self.engine.images.get(c.image_id)
            return
        except docker.errors.ImageNotFound:
            pass
        except (docker.errors.DockerException, OSError) as exc:
            raise ContainerError(f"image {c.spec.image}: {exc}") from None
        ensure_image(Host(self.cfg.host, "127.0.0.1", ("app",)), self.engine, c.spec.image)
        got = self.engine.images.get(c.spec.image).id
        if got != c.image_id:
            raise ContainerError(f"image {c.spec.image} is {got} on host {self.cfg.host}, "
                                 f"not {c.image_id} as the slice says")

    def _remove(self, c: ObservedContainer) -> None:
        try:
            stop_and_remove(self.engine, c.name, 10)
            log.info("removed %s (not in the slice)", c.name)
        except ReconcilerError as exc:
            log.warning("host %s: %s", self.cfg.host, exc)
        self.healthy.discard(c.id)
        self.errors.pop(c.name, None)

    # ------------------------------------------------------------------ report

    def current(self) -> AppReport:
        """What the host runs now, as the report says it."""
        out = []
        for c in self._managed():
            error = self.errors.get(c.name, "")
            health = c.health
            if c.status == "running" and c.id in self.healthy:
                health = "healthy"
            elif error:
                health = "unhealthy"
            address, port = c.published or ("", 0)
            out.append(ReportedContainer(c.name, c.status, health, c.image_id, c.labels,
                                         address, port, error))
        value = self.slice
        refs = [*value.pulls, *(c.spec.image for c in value.containers)] if value else []
        return AppReport(self.cfg.host, self.revision, value.commit if value else "",
                         tuple(out), round(time.time(), 3), self.error, self.pull(refs))

    def report(self, error: str = "") -> None:
        """Write ``hosts/<host>/app-report`` bound to the agent's lease (``error``: why
        the last slice could not be applied)."""
        self.error = error
        self.lease.renew()
        self.client.put(self.cfg.keys.app_report(self.cfg.host), encode_app_report(self.current()),
                        lease=self.lease.id)

