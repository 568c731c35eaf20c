"""Health check kinds: one declaration per kind.

A service's ``health`` in the manifests names one kind (``http: /path``,
``command: [...]``, or none at all). Everything that differs between kinds is said here,
once, by the kind's class; the rest of the code asks the kind and holds no if-chain on
its name:

- ``key`` and ``read``: which manifest key selects the kind, and how its part of the
  manifest's ``health`` mapping goes into the model's ``HealthCheck`` (``desired/``);
- ``docker_test``: the test of the container's Docker healthcheck, or None for none
  (``apply/containers.py``);
- ``gate``: what the health gate probes before a new container gets traffic
  (``apply/containers.py``, ``wait_healthy``);
- ``lb_check``: the check the load balancer runs against each server, LB-neutral
  (``lb/haproxy/render.py`` turns it into HAProxy lines).

Adding a kind (say, ``tcp``) is one class in ``KINDS`` and its part of
``schemas/service.schema.json`` (a property under ``health`` and a ``oneOf`` entry).
``HealthCheck`` keeps its fields: its plain form is part of container config hashes and
of the HAProxy section digests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from reconciler.model import HealthCheck


@dataclass(frozen=True)
class Gate:
    """What the health gate probes: ``http`` a GET of ``path`` on the published port
    (2xx/3xx is good); ``docker`` the container's own Docker health status; ``tcp``
    that the published port accepts a connection."""

    probe: Literal["http", "docker", "tcp"]
    path: str = ""


@dataclass(frozen=True)
class LBCheck:
    """The check a load balancer runs against each server of a service: ``http`` a GET
    of ``path``, ``tcp`` a connect; every ``interval_ms``, at most ``timeout_ms``,
    ``retries`` failures in a row mark a server down."""

    kind: Literal["http", "tcp"]
    interval_ms: int
    timeout_ms: int
    retries: int
    path: str = ""


class HealthKind:
    """One kind of health check. Subclasses set ``name`` and ``key`` and override what
    differs from the defaults (no Docker healthcheck, a TCP gate, a TCP LB check)."""

    name: ClassVar[str]
    key: ClassVar[str | None]  # the manifest key under ``health`` that selects it

    def read(self, part: dict[str, Any], base: HealthCheck) -> HealthCheck:
        """The model's check of a manifest ``health`` mapping ``part``; ``base`` holds
        the settings common to all kinds (interval, timeout, retries, start period)."""
        return replace(base, kind=self.name)

    def docker_test(self, check: HealthCheck) -> list[str] | None:
        """Docker's healthcheck ``test`` of a container; None: no Docker healthcheck."""
        return None

    def gate(self, check: HealthCheck) -> Gate:
        return Gate(probe="tcp")

    def lb_check(self, check: HealthCheck) -> LBCheck | None:
        """The load balancer's check; None: the LB's default check (TCP, its own timing)."""
        return LBCheck(
            kind="tcp",
            interval_ms=check.interval_ms,
            timeout_ms=check.timeout_ms,
            retries=check.retries,
        )


class HttpKind(HealthKind):
    """``http: /path``: probed from outside on the published port, by the gate and by
    the load balancer; no Docker healthcheck."""

    name = "http"
    key = "http"

    def read(self, part: dict[str, Any], base: HealthCheck) -> HealthCheck:
        return replace(base, kind=self.name, path=part[self.name])

    def gate(self, check: HealthCheck) -> Gate:
        return Gate(probe="http", path=check.path)

    def lb_check(self, check: HealthCheck) -> LBCheck | None:
        return LBCheck(
            kind="http",
            interval_ms=check.interval_ms,
            timeout_ms=check.timeout_ms,
            retries=check.retries,
            path=check.path,
        )


class CommandKind(HealthKind):
    """``command: [...]``: Docker runs it in the container; the gate waits for Docker's
    verdict; the load balancer connects (TCP)."""

    name = "command"
    key = "command"

    def read(self, part: dict[str, Any], base: HealthCheck) -> HealthCheck:
        return replace(base, kind=self.name, command=tuple(part[self.name]))

    def docker_test(self, check: HealthCheck) -> list[str] | None:
        return ["CMD", *check.command]

    def gate(self, check: HealthCheck) -> Gate:
        return Gate(probe="docker")


class NoneKind(HealthKind):
    """No ``health`` in the manifest: the gate waits for the port; the LB's default check."""

    name = "none"
    key = None

    def lb_check(self, check: HealthCheck) -> LBCheck | None:
        return None


KINDS: dict[str, HealthKind] = {k.name: k for k in (HttpKind(), CommandKind(), NoneKind())}
NO_HEALTH = HealthCheck(kind=NoneKind.name)


def kind_of(check: HealthCheck) -> HealthKind:
    """The kind of ``check``."""
    return KINDS[check.kind]


def read_health(part: dict[str, Any] | None, base: HealthCheck) -> HealthCheck:
    """The model's check of a manifest's ``health`` mapping (None: no health check).
    ``base``: the common settings, already read; the schema lets exactly one kind's key
    through."""
    if part is None:
        return NO_HEALTH
    for kind in KINDS.values():
        if kind.key is not None and kind.key in part:
            return kind.read(part, base)
    raise ValueError(f"health names no known kind: {sorted(part)}")
