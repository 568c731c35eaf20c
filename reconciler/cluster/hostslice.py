"""What the leader publishes for one app host, and what its agent reports back (values
of ``hosts/<host>/desired`` and ``hosts/<host>/app-report``, ``reconciler.cluster.keys``).
Pure: no I/O.

- ``HostSlice`` (``hosts/<host>/desired``): the commit, the address the host's
  containers publish their port on, the rollout batch the host is in, and every
  container the host should run: its name, service, release revision, image id, the
  labels the executor gives it (so containers started by an agent and by an ``ssh``
  pass are the same and adopt each other) and its full spec (image, env, health check,
  limits, ...). A secret is named by its reference (a file on the host, a variable of
  the agent's environment), never by its value: the agent reads it on its own host.
- ``AppReport`` (``hosts/<host>/app-report``, bound to the agent's lease): the store
  revision of the slice the agent applied, its commit, and every managed container of
  the agent's instance and environment that exists on the host: status, health, where
  it publishes, its labels, and why it is not healthy when it is not.

Values are canonical JSON objects with ``format`` and ``version`` (as ``lbconfig``'s);
``decode_slice`` and ``decode_app_report`` check every field and raise
``LBConfigError`` naming the key, the field and the bad value.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal

from reconciler import identity
from reconciler.cluster.lbconfig import _bad, _body, _encode, _name, decode
from reconciler.model import (
    ContainerSpec,
    ContainerStatus,
    HealthStatus,
    ObservedContainer,
    ObservedHost,
    Pairs,
)

SLICE_FORMAT = "reconciler/host-slice"
APP_REPORT_FORMAT = "reconciler/app-report"


@dataclass(frozen=True)
class SliceContainer:
    name: str
    service: str
    revision: str
    image_id: str
    labels: Pairs
    spec: ContainerSpec

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


@dataclass(frozen=True)
class HostSlice:
    """What one app host should run (see the module). ``batch``: the host's rollout
    batch (0-based) in the leader's pass that wrote the slice."""

    host: str
    environment: str
    instance: str
    commit: str
    address: str
    containers: tuple[SliceContainer, ...]
    keep: tuple[str, ...] = ()  # containers left as they are (e.g. draining), not removed
    pulls: tuple[str, ...] = ()  # image references to have on the host (ids reported)
    batch: int = 0

    def names(self) -> frozenset[str]:
        """The containers the host keeps: those it runs and those it leaves alone."""
        return frozenset(c.name for c in self.containers) | frozenset(self.keep)


@dataclass(frozen=True)
class ReportedContainer:
    name: str
    status: ContainerStatus
    health: HealthStatus
    image_id: str
    labels: Pairs
    address: str = ""  # "" (and port 0): publishes no port
    port: int = 0
    error: str = ""  # why the agent could not start it or it is not healthy

    def observed(self) -> ObservedContainer:
        """As the planner observes a container (the agent's host has no other view)."""
        where = (self.address, self.port) if self.port else None
        return ObservedContainer(self.name, self.name, self.labels, self.status, self.health,
                                 self.image_id, where)


@dataclass(frozen=True)
class AppReport:
    """What an app agent applied (see the module): ``revision`` is the mod revision of
    the slice it applied (0: none yet), ``error`` why the last apply failed ("": none)."""

    host: str
    revision: int
    commit: str
    containers: tuple[ReportedContainer, ...]
    at: float
    error: str = ""
    images: Pairs = ()  # image reference -> id, for the slice's pulls and containers
    role: Literal["app"] = "app"

    def observed(self) -> ObservedHost:
        return ObservedHost(self.host, tuple(c.observed() for c in self.containers),
                            self.images)

    def container(self, name: str) -> ReportedContainer | None:
        return next((c for c in self.containers if c.name == name), None)


def encode_slice(value: HostSlice) -> bytes:
    return _encode(SLICE_FORMAT, value)


def encode_app_report(report: AppReport) -> bytes:
    return _encode(APP_REPORT_FORMAT, report)


def decode_slice(key: str, raw: bytes) -> HostSlice:
    """The slice in ``raw`` (the value of ``key``); LBConfigError when it is not one, or
    when a container would not be a managed one of the slice's instance and environment
    (an agent starts only containers it may later remove)."""
    value = decode(HostSlice, _body(key, raw, SLICE_FORMAT), key)
    for what, name in (("host", value.host), ("environment", value.environment),
                       ("instance", value.instance)):
        _name(key, what, name)
    try:
        ip_address(value.address)
    except ValueError:
        _bad(key, "address", value.address, "is not an IP address")
    names = [c.name for c in value.containers]
    if len(set(names)) != len(names):
        _bad(key, "containers", sorted(n for n in names if names.count(n) > 1)[0], "appears twice")
    for i, c in enumerate(value.containers):
        _check_container(key, f"containers[{i}]", c, value)
    return value


def _check_container(key: str, where: str, c: SliceContainer, value: HostSlice) -> None:
    _name(key, f"{where}.name", c.name)
    if not 1 <= c.spec.port <= 65535:
        _bad(key, f"{where}.spec.port", c.spec.port, "is not 1-65535")
    if not c.image_id:
        _bad(key, f"{where}.image_id", c.image_id, "is empty")
    must = {identity.MANAGED: "true", identity.ENVIRONMENT: value.environment,
            identity.INSTANCE: value.instance, identity.SERVICE: c.service,
            identity.REVISION: c.revision}
    for label, wanted in must.items():
        if c.label(label) != wanted:
            _bad(key, f"{where}.labels.{label}", c.label(label), f"is not {wanted!r}")


def decode_app_report(key: str, raw: bytes) -> AppReport:
    """The app report in ``raw`` (the value of ``key``); LBConfigError when it is not one."""
    report = decode(AppReport, _body(key, raw, APP_REPORT_FORMAT), key)
    for i, c in enumerate(report.containers):
        if c.port and not 1 <= c.port <= 65535:
            _bad(key, f"containers[{i}].port", c.port, "is not 1-65535")
    return report
