"""The action types of a Plan: immutable data, each with a human reason.

An action says *what* to do and *why*; the executor decides nothing. ``describe`` is the
one line shown in plans and history; ``to_json`` the machine form. Neither ever contains
a secret value (the planner never has one) and env values of secret-looking keys are masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from reconciler.identity import shown_env_value
from reconciler.model import ContainerSpec


@dataclass(frozen=True)
class Action:
    kind: ClassVar[str] = "action"
    symbol: ClassVar[str] = "*"
    host: str
    service: str | None
    reason: str

    def describe(self) -> str:
        """One line for plans and history; every concrete action says more."""
        return f"{self.kind} on {self.host}"

    @property
    def reloads(self) -> bool:
        """Whether this step reloads the load balancer (only a config step may)."""
        return False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ContainerSpec):
                value = spec_summary(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["description"] = self.describe()
        out["reloads"] = self.reloads
        return out


def spec_summary(spec: ContainerSpec) -> dict[str, Any]:
    """What a plan shows of a container spec: env values masked where secret-looking."""
    return {
        "image": spec.image,
        "port": spec.port,
        "env": {k: shown_env_value(k, v) for k, v in spec.env},
        "secrets": [f"{s.name} (from {s.source} {s.location})" for s in spec.secrets],
        "health": spec.health.kind,
        "labels": dict(spec.labels),
    }


@dataclass(frozen=True)
class PullImage(Action):
    kind: ClassVar[str] = "pull-image"
    symbol: ClassVar[str] = "+"
    image: str = ""

    def describe(self) -> str:
        return f"pull image {self.image}"


@dataclass(frozen=True)
class StartContainer(Action):
    """Create and start a container, then wait until it is healthy (the health gate)."""

    kind: ClassVar[str] = "start-container"
    symbol: ClassVar[str] = "+"
    name: str = ""
    revision: str = ""
    replica: int = 0
    image_id: str = ""  # "" when the image is not on the host yet (pulled first)
    config_hash: str = ""
    spec: ContainerSpec | None = field(default=None, compare=True)

    def describe(self) -> str:
        image = self.spec.image if self.spec else "?"
        return f"start container {self.name} ({image}, replica {self.replica}) and wait healthy"


@dataclass(frozen=True)
class RemoveContainer(Action):
    """Stop (with the grace period) and remove a container; volumes are kept."""

    kind: ClassVar[str] = "remove-container"
    symbol: ClassVar[str] = "-"
    name: str = ""
    container_id: str = ""
    grace_s: int = 10

    def describe(self) -> str:
        return f"stop and remove container {self.name}"


@dataclass(frozen=True)
class AddServer(Action):
    """``runtime``: add it through the runtime API at weight 0, wait until HAProxy's own
    check says UP, then give it ``weight`` (no reload; the config step after it only
    writes the file). Otherwise it comes with the config of the reload (or start) that
    follows: its backend is new, or HAProxy does not run."""

    kind: ClassVar[str] = "add-server"
    symbol: ClassVar[str] = "+"
    backend: str = ""
    server: str = ""
    app_host: str = ""
    container: str = ""
    weight: int = 0
    runtime: bool = False

    def describe(self) -> str:
        how = "at runtime, UP first" if self.runtime else "with the config"
        return f"add server {self.server} to {self.backend} at weight {self.weight} ({how})"


@dataclass(frozen=True)
class RepointServer(Action):
    """Runtime API: point a server HAProxy has at the published address and port of its
    container, which is new (the old one was lost) or moved; wait until it is UP. No
    reload: the config file is written afterwards."""

    kind: ClassVar[str] = "repoint-server"
    symbol: ClassVar[str] = "~"
    backend: str = ""
    server: str = ""
    app_host: str = ""
    container: str = ""

    def describe(self) -> str:
        return f"point server {self.server} of {self.backend} at its container"


@dataclass(frozen=True)
class SetWeight(Action):
    """Runtime API: set the weight (and state ready); no reload."""

    kind: ClassVar[str] = "set-weight"
    symbol: ClassVar[str] = "~"
    backend: str = ""
    server: str = ""
    old_weight: int = 0
    weight: int = 0

    def describe(self) -> str:
        return f"set weight of {self.backend}/{self.server} {self.old_weight} -> {self.weight}"


@dataclass(frozen=True)
class DrainServer(Action):
    """Runtime API: weight 0 and drain; wait for current sessions to reach 0 (bounded)."""

    kind: ClassVar[str] = "drain-server"
    symbol: ClassVar[str] = "~"
    backend: str = ""
    server: str = ""
    timeout_s: int = 30

    def describe(self) -> str:
        return f"drain {self.backend}/{self.server} (up to {self.timeout_s}s)"


@dataclass(frozen=True)
class RemoveServer(Action):
    """Runtime API: maintenance, then ``del server`` (after the drain); no reload."""

    kind: ClassVar[str] = "remove-server"
    symbol: ClassVar[str] = "-"
    backend: str = ""
    server: str = ""

    def describe(self) -> str:
        return f"remove server {self.server} from {self.backend}"


@dataclass(frozen=True)
class ConfigureLB(Action):
    """Render the config for the servers known at this point, verify, install; reload or
    start HAProxy when ``reload`` (structure changed), else only write the file."""

    kind: ClassVar[str] = "configure-haproxy"
    symbol: ClassVar[str] = "!"
    reload: bool = True
    reasons: tuple[str, ...] = ()

    @property
    def reloads(self) -> bool:
        return self.reload

    def describe(self) -> str:
        verb = (
            "install config and reload HAProxy"
            if self.reload
            else "write HAProxy config, no reload"
        )
        return f"{verb} ({'; '.join(self.reasons)})" if self.reasons else verb


@dataclass(frozen=True)
class ReplaceCertificate(Action):
    """Runtime API: serve the current content of a TLS frontend's certificate file
    (``set ssl cert`` + ``commit ssl cert``); no reload. Names serials and a digest of
    the file, never its content."""

    kind: ClassVar[str] = "replace-certificate"
    symbol: ClassVar[str] = "~"
    path: str = ""
    old_serial: str = ""
    serial: str = ""
    digest: str = ""  # sha256 of the file the plan saw, shortened

    def describe(self) -> str:
        return (
            f"replace certificate {self.path} at runtime, serial {self.old_serial or 'none'}"
            f" -> {self.serial} (no reload)"
        )


@dataclass(frozen=True)
class ObtainCertificate(Action):
    """Give an ACME frontend a certificate on one LB host: issue one from the ACME
    directory (HTTP-01 answered by every LB host of its load balancer) when ``source``
    is "", else copy the current one of LB host ``source``; write it to this host's
    state dir and serve it through the runtime API (no reload)."""

    kind: ClassVar[str] = "obtain-certificate"
    symbol: ClassVar[str] = "+"
    frontend: str = ""
    directory: str = ""
    domains: tuple[str, ...] = ()
    email: str | None = None
    source: str = ""

    def describe(self) -> str:
        how = f"from {self.directory}" if not self.source else f"copied from {self.source}"
        return f"certificate for {', '.join(self.domains)} ({self.frontend}) {how} (no reload)"

