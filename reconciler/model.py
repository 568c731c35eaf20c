"""Frozen data of desired and observed state.

Everything the planner reads is here: plain, immutable, comparable values with no I/O.
Mappings are stored as sorted tuples of pairs so that equal states compare and hash
equal and serialise to the same bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from reconciler.coordination import Coordination

Pairs = tuple[tuple[str, str], ...]

# --------------------------------------------------------------------------- desired


@dataclass(frozen=True)
class SshConnection:
    """How to reach a host over SSH. ``host_key_checking`` is never 'off'."""

    user: str
    port: int = 22
    key: str | None = None
    known_hosts: str | None = None
    host_key_checking: Literal["strict", "accept-new"] = "strict"
    docker_socket: str | None = None  # None: /var/run/docker.sock
    state_dir: str = "/var/lib/reconciler"  # where an LB host's embedded HAProxy lives


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    roles: tuple[str, ...]
    ssh: SshConnection | None = None  # None: the local host (Docker socket, local files)


@dataclass(frozen=True)
class HealthCheck:
    """``kind`` names one of ``reconciler.health.KINDS`` ('http' probes ``path`` on the
    container port; 'command' runs ``command``; 'none'), which says what it means."""

    kind: str
    path: str = "/"
    command: tuple[str, ...] = ()
    interval_ms: int = 2000
    timeout_ms: int = 1000
    retries: int = 3
    start_period_ms: int = 0


@dataclass(frozen=True)
class Volume:
    type: Literal["volume", "bind"]
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class SecretRef:
    """A secret by name. Its value is read on the target host at apply time, never from git.

    ``source`` is 'file' or 'env'; ``location`` the path or variable name there; ``version``
    is bumped in git to roll containers after the value was rotated."""

    name: str
    source: Literal["file", "env"]
    location: str
    version: str = ""


@dataclass(frozen=True)
class Logging:
    driver: str
    options: Pairs = ()


@dataclass(frozen=True)
class ContainerSpec:
    """Everything that defines a container of one release, except the resolved image id."""

    image: str  # repository:tag (or @digest) as written in git
    port: int
    command: tuple[str, ...] | None
    args: tuple[str, ...] | None
    env: Pairs
    secrets: tuple[SecretRef, ...]
    health: HealthCheck
    volumes: tuple[Volume, ...]
    memory_bytes: int | None
    nano_cpus: int | None
    restart: str
    logging: Logging | None
    labels: Pairs
    stop_grace_s: int


@dataclass(frozen=True)
class Release:
    revision: str
    weight: int  # percent of the service's traffic, 0-100
    spec: ContainerSpec
    canary: CanaryPolicy | None = None


@dataclass(frozen=True)
class CanaryStep:
    weight: int
    min_duration_ms: int = 60_000
    min_requests: int = 100


@dataclass(frozen=True)
class LatencyPolicy:
    """When a canary is slower than its baseline (reconciler.canary.latency): slower
    than ``max_slowdown`` times the baseline, judged on requests above the baseline's
    ``quantile`` of its earlier times (never below ``min_ms``)."""

    quantile: float = 0.95
    max_slowdown: float = 1.2
    min_ms: float = 2.0


@dataclass(frozen=True)
class CanaryPolicy:
    """A release judged against the service's other release (the baseline) while its
    weight follows ``steps``; its declared weight (0) is where it goes on abort."""

    steps: tuple[CanaryStep, ...]
    confidence: float = 0.99
    max_error_rate: float = 0.05
    interval_ms: int = 10_000
    latency: LatencyPolicy | None = field(default_factory=LatencyPolicy)  # None: off
    errors_4xx: bool = False


@dataclass(frozen=True)
class Timeouts:
    connect_ms: int = 5000
    server_ms: int = 30000
    queue_ms: int = 30000


@dataclass(frozen=True)
class ActionSpec:
    """A named kind of request of a service (for request records and canary analysis):
    ``path`` is a template whose ``{name}`` segments match one path segment each;
    ``method`` None matches any method."""

    name: str
    path: str
    method: str | None = None


@dataclass(frozen=True)
class Service:
    name: str
    releases: tuple[Release, ...]
    replicas: int  # per host
    hosts: tuple[str, ...]
    balance: str = "roundrobin"
    timeouts: Timeouts = Timeouts()
    drain_timeout_s: int = 30
    actions: tuple[ActionSpec, ...] = ()
    max_actions: int = 20  # actions kept apart per service; the rest count as "other"

    @property
    def health(self) -> HealthCheck:
        """The service's health check. It is declared once per service in the manifests
        (not per release), and the manifest reading gives every release's spec that one
        check (a container's spec carries it for its config hash)."""
        return self.releases[0].spec.health if self.releases else HealthCheck(kind="none")


@dataclass(frozen=True)
class Route:
    service: str
    host: str | None = None  # Host header, exact match
    path_prefix: str | None = None


@dataclass(frozen=True)
class AcmeSpec:
    """A TLS frontend's certificates from an ACME directory (HTTP-01 answered by HAProxy)."""
    directory: str  # https URL of the ACME directory
    domains: tuple[str, ...]
    email: str | None = None


@dataclass(frozen=True)
class Frontend:
    name: str
    bind_address: str
    bind_port: int
    routes: tuple[Route, ...]
    default_service: str | None = None
    tls_certificate: str | None = None
    tls_acme: AcmeSpec | None = None  # instead of tls_certificate
    redirect_https: bool = False
    client_timeout_ms: int = 30000


@dataclass(frozen=True)
class SyslogTarget:
    """Where HAProxy also sends its request log (UDP syslog)."""

    address: str  # IPv4:port
    facility: str = "local0"
    format: str = "rfc3164"


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    hosts: tuple[str, ...]
    frontends: tuple[Frontend, ...]
    request_records: bool = True  # every request logged into the ring (request records)
    syslog: SyslogTarget | None = None


@dataclass(frozen=True)
class Rollout:
    """How a change moves across app hosts: ``limit`` hosts per batch (None: all),
    ``wait_ms`` between batches, ``concurrency`` hosts at a time within a batch."""

    limit: int | None = None
    wait_ms: int = 0
    concurrency: int = 8
    on_failure: Literal["stop", "continue"] = "stop"


@dataclass(frozen=True)
class Instance:
    """The reconciler instance that acts (not from git: from its state dir or flags).

    Its containers carry ``name`` in a label and as a name prefix, so two instances on one
    engine never see each other's containers. ``adopt_unlabelled``: also own managed
    containers that carry no instance label (made before instances existed). The default
    (no name) is the form of tests and of pure callers that never touch an engine.
    ``label_key``: the host-local secret that keys the digests of secret-looking env
    values in labels and config hashes (``identity.keyed_digest``); never printed."""

    name: str = ""
    adopt_unlabelled: bool = True
    label_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class DesiredState:
    """The desired state of one environment at one commit, for one reconciler instance."""

    environment: str
    commit: str
    hosts: tuple[Host, ...]
    services: tuple[Service, ...]
    loadbalancers: tuple[LoadBalancer, ...]
    rollout: Rollout = Rollout()
    instance: Instance = Instance()
    coordination: Coordination = field(default_factory=Coordination)

    @property
    def app_host_names(self) -> frozenset[str]:
        """The hosts some service of this environment runs on."""
        return frozenset(h for s in self.services for h in s.hosts)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


# --------------------------------------------------------------------------- observed

ContainerStatus = Literal[
    "created", "running", "paused", "restarting", "removing", "exited", "dead"
]
HealthStatus = Literal["healthy", "unhealthy", "starting", "none"]


@dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    labels: Pairs
    status: ContainerStatus
    health: HealthStatus
    image_id: str
    # published (host_ip, host_port) of the service's container port, when published
    published: tuple[str, int] | None = None

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class ObservedHost:
    name: str
    containers: tuple[ObservedContainer, ...]  # managed containers only
    images: Pairs = ()  # image reference -> image id, for the references that exist here


@dataclass(frozen=True)
class ServerState:
    """One line of HAProxy's ``show servers state``."""

    backend: str
    server: str
    address: str
    port: int
    weight: int  # user weight (uweight), 0-256
    operational: Literal["stopped", "starting", "running", "stopping"]
    admin: tuple[str, ...]  # e.g. ("maint",), ("drain",), () when ready


@dataclass(frozen=True)
class ServerStats:
    """Counters of one server from ``show stat`` (CSV)."""

    backend: str
    server: str
    status: str  # UP, DOWN, MAINT, DRAIN, "no check", ...
    weight: int
    current_sessions: int
    total_sessions: int
    hrsp_1xx: int = 0
    hrsp_2xx: int = 0
    hrsp_3xx: int = 0
    hrsp_4xx: int = 0
    hrsp_5xx: int = 0
    hrsp_other: int = 0
    eresp: int = 0
    econ: int = 0
    # retries and redispatches: a client may still get a 200 while its first attempt
    # failed (a server closed or gone under it); HAProxy counts it here only
    wretr: int = 0
    wredis: int = 0
    rtime_ms: int = 0
    ttime_ms: int = 0
    check_status: str = ""  # e.g. L7OK, L4CON, INI; "" when the server has no check


@dataclass(frozen=True)
class CertState:
    """A certificate file on an LB host and what HAProxy serves from its path (no key)."""
    path: str
    file_digest: str | None = None  # sha256 of the file; None: unreadable (see problem)
    file_serial: str | None = None
    file_fingerprint: str | None = None  # SHA-1 of the leaf's DER, upper-case hex
    file_validity: tuple[float, float] | None = None  # not before, not after (epoch s)
    file_names: tuple[str, ...] = ()  # DNS names of the leaf (subject alternative names)
    loaded_serial: str | None = None  # None: HAProxy serves nothing from this path
    loaded_fingerprint: str | None = None
    problem: str | None = None  # why the file could not be read (names no content)


@dataclass(frozen=True)
class ObservedLB:
    """HAProxy on one load-balancer host. ``running`` False: no socket answered."""

    host: str
    running: bool
    # section name ("frontend http", "backend web", "global") -> digest, from the
    # installed config's reconciler header; empty when no managed config is installed
    config_sections: Pairs = ()
    # (backend, server, address, port, weight) of the server lines in the installed config
    config_servers: tuple[tuple[str, str, str, int, int], ...] = ()
    servers: tuple[ServerState, ...] = ()
    stats: tuple[ServerStats, ...] = ()
    worker_pid: int = 0  # the worker whose counters ``stats`` are (a new one counts from 0)
    acme_dir: str = ""  # where this host keeps ACME files (account key, certificates)
    certificates: tuple[CertState, ...] = ()  # those of the installed config's binds

    def certificate(self, path: str) -> CertState | None:
        return next((c for c in self.certificates if c.path == path), None)


@dataclass(frozen=True)
class ObservedState:
    hosts: tuple[ObservedHost, ...] = ()
    lbs: tuple[ObservedLB, ...] = field(default=())  # one per LB host
    observed_at: float = 0.0  # seconds since the epoch (certificate renewal is due by it)

    def host(self, name: str) -> ObservedHost:
        for h in self.hosts:
            if h.name == name:
                return h
        return ObservedHost(name=name, containers=())

    def lb(self, name: str) -> ObservedLB:
        for h in self.lbs:
            if h.host == name:
                return h
        return ObservedLB(host=name, running=False)
