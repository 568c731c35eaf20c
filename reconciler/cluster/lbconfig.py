"""What the leader publishes for the LB hosts, and its JSON form (values of ``pool/`` and
``lb/`` keys, ``reconciler.cluster.keys``). Pure: no I/O.

- ``Pool`` (key ``pool/<backend>``): the servers a backend should have, each with its
  name, app host, container, address, port, weight (0-256), state (``ready``, or
  ``drain``: weight 0, kept so its sessions finish) and release revision. A server
  absent from its pool is drained and deleted by the agents.
- ``Structure`` (key ``lb/<loadbalancer>``): everything an LB host renders but the
  servers: the load balancer (frontends, routes, TLS bindings, logging), its hosts, and
  each backend's options (balance, timeouts, health check, drain timeout).

Values are canonical JSON objects with ``format`` and ``version``; a reader refuses
another format or a newer version. ``decode_pool`` and ``decode_structure`` validate
every field against its type (no string may hold a control character such as a
newline, and server names, addresses, ports and weights must be what the runtime API
may be given) and raise ``LBConfigError`` naming the key, the
field and the bad value.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from reconciler import identity
from reconciler.errors import ClusterError
from reconciler.model import (
    ContainerSpec,
    DesiredState,
    HealthCheck,
    Host,
    LoadBalancer,
    Release,
    ServerStats,
    Service,
    Timeouts,
)

POOL_FORMAT = "reconciler/pool"
STRUCTURE_FORMAT = "reconciler/lb-structure"
REPORT_FORMAT = "reconciler/lb-report"
VERSION = 1
MAX_WEIGHT = 256
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
T = TypeVar("T")


class LBConfigError(ClusterError):
    """A published value that cannot be read: not JSON, another format or version, or a
    field of the wrong type or value (the message names key, field and value)."""


@dataclass(frozen=True)
class PoolServer:
    name: str  # HAProxy server name: "<app host>.<container>"
    app_host: str
    container: str
    address: str
    port: int
    weight: int  # HAProxy weight, 0-256
    revision: str  # the release it runs
    state: Literal["ready", "drain"] = "ready"


@dataclass(frozen=True)
class Pool:
    backend: str
    service: str
    servers: tuple[PoolServer, ...]


@dataclass(frozen=True)
class Backend:
    """The options of one service's backend. ``health`` None: a service without
    releases (HAProxy's default check)."""

    service: str
    balance: str
    timeouts: Timeouts
    health: HealthCheck | None
    drain_timeout_s: int = 30


@dataclass(frozen=True)
class LBHost:
    name: str
    address: str


@dataclass(frozen=True)
class Structure:
    environment: str
    commit: str
    loadbalancer: LoadBalancer
    hosts: tuple[LBHost, ...]
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class LBReport:
    """What an LB agent applied (key ``hosts/<host>/report``, bound to its lease): the
    store revision of the read it applied, that structure's commit, the reloads it made
    since it started, and when (seconds since the epoch); with its HAProxy's server
    counters then and the worker they are of (the leader's canary analysis reads them,
    ``reconciler.agent.leaderpass``)."""

    host: str
    revision: int
    commit: str
    reloads: int
    at: float
    role: Literal["lb"] = "lb"
    stats: tuple[ServerStats, ...] = ()
    worker_pid: int = 0


@dataclass(frozen=True)
class Publication:
    """Everything the leader publishes for the LB hosts of one environment."""

    structures: tuple[Structure, ...]
    pools: tuple[Pool, ...]


# ------------------------------------------------------------------ from desired state


def structure_of(desired: DesiredState, lb: LoadBalancer) -> Structure:
    """The structure of ``lb`` in ``desired`` (what ``desired_for`` gives back)."""
    return Structure(
        environment=desired.environment,
        commit=desired.commit,
        loadbalancer=lb,
        hosts=tuple(LBHost(h, desired.host(h).address) for h in lb.hosts),
        backends=tuple(
            Backend(s.name, s.balance, s.timeouts, s.health if s.releases else None,
                    s.drain_timeout_s)
            for s in desired.services
        ),
    )


def desired_for(structure: Structure) -> DesiredState:
    """A desired state that renders, digests and plans the LB part exactly as the
    leader's full one does (services carry only what the LB reads of them; a service
    with a health check gets one placeholder release that carries it)."""
    services = tuple(
        Service(
            name=b.service,
            releases=(() if b.health is None else (Release("-", 0, _carrier(b.health)),)),
            replicas=0,
            hosts=(),
            balance=b.balance,
            timeouts=b.timeouts,
            drain_timeout_s=b.drain_timeout_s,
        )
        for b in structure.backends
    )
    return DesiredState(
        environment=structure.environment,
        commit=structure.commit,
        hosts=tuple(Host(h.name, h.address, ("lb",)) for h in structure.hosts),
        services=services,
        loadbalancers=(structure.loadbalancer,),
    )


def _carrier(health: HealthCheck) -> ContainerSpec:
    return ContainerSpec(image="-", port=0, command=None, args=None, env=(), secrets=(),
                         health=health, volumes=(), memory_bytes=None, nano_cpus=None,
                         restart="no", logging=None, labels=(), stop_grace_s=0)


# ------------------------------------------------------------------ encode


def encode_pool(pool: Pool) -> bytes:
    return _encode(POOL_FORMAT, pool)


def encode_structure(structure: Structure) -> bytes:
    return _encode(STRUCTURE_FORMAT, structure)


def encode_report(report: LBReport) -> bytes:
    return _encode(REPORT_FORMAT, report)


def decode_report(key: str, raw: bytes) -> LBReport:
    """The report in ``raw`` (the value of ``key``); LBConfigError when it is not one."""
    return decode(LBReport, _body(key, raw, REPORT_FORMAT), key)


def _encode(fmt: str, value: Any) -> bytes:
    body = {"format": fmt, "version": VERSION, **dataclasses.asdict(value)}
    return identity.canonical_json(body).encode()


# ------------------------------------------------------------------ decode


def decode_pool(key: str, raw: bytes) -> Pool:
    """The pool in ``raw`` (the value of ``key``); LBConfigError when it is not one."""
    pool = decode(Pool, _body(key, raw, POOL_FORMAT), key)
    if pool.backend != identity.backend_name(pool.service):
        _bad(key, "backend", pool.backend, f"is not the backend of service {pool.service!r}")
    for i, s in enumerate(pool.servers):
        _check_server(key, f"servers[{i}]", s)
    names = [s.name for s in pool.servers]
    if len(set(names)) != len(names):
        _bad(key, "servers", sorted(n for n in names if names.count(n) > 1)[0], "appears twice")
    return pool


def decode_structure(key: str, raw: bytes) -> Structure:
    """The structure in ``raw`` (the value of ``key``); LBConfigError when it is not one."""
    st = decode(Structure, _body(key, raw, STRUCTURE_FORMAT), key)
    for i, h in enumerate(st.hosts):
        _name(key, f"hosts[{i}].name", h.name)
    if sorted(h.name for h in st.hosts) != sorted(st.loadbalancer.hosts):
        _bad(key, "hosts", [h.name for h in st.hosts], "are not the load balancer's hosts")
    return st


def _body(key: str, raw: bytes, fmt: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise LBConfigError(f"etcd key {key!r}: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise LBConfigError(f"etcd key {key!r}: not a JSON object")
    if body.pop("format", None) != fmt:
        raise LBConfigError(f"etcd key {key!r}: field format is not {fmt!r}")
    version = body.pop("version", None)
    if version != VERSION:
        raise LBConfigError(
            f"etcd key {key!r}: field version is {version!r}; this reconciler reads "
            f"version {VERSION} (upgrade it to read newer ones)"
        )
    return body


def _check_server(key: str, where: str, s: PoolServer) -> None:
    _name(key, f"{where}.app_host", s.app_host)
    _name(key, f"{where}.container", s.container)
    if s.name != identity.server_name(s.app_host, s.container):
        _bad(key, f"{where}.name", s.name, "is not <app_host>.<container>")
    try:
        ip_address(s.address)
    except ValueError:
        _bad(key, f"{where}.address", s.address, "is not an IP address")
    if not 1 <= s.port <= 65535:
        _bad(key, f"{where}.port", s.port, "is not 1-65535")
    if not 0 <= s.weight <= MAX_WEIGHT:
        _bad(key, f"{where}.weight", s.weight, f"is not 0-{MAX_WEIGHT}")


def _name(key: str, where: str, value: str) -> None:
    # Names go into runtime API commands: no spaces, no separators of that syntax.
    if not _NAME.fullmatch(value):
        _bad(key, where, value, "is not a name (letters, digits, '.', '_', '-')")


def _bad(key: str, where: str, value: object, why: str) -> typing.NoReturn:
    raise LBConfigError(f"etcd key {key!r}: field {where} {value!r} {why}")


def decode(cls: type[T], data: object, key: str, where: str = "") -> T:
    """An instance of the frozen dataclass ``cls`` from ``data`` (as ``asdict`` made it),
    every field checked against its annotation; LBConfigError naming the field."""
    if not isinstance(data, dict):
        _bad(key, where or "(value)", data, "is not an object")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    extra = sorted(set(data) - set(fields))
    if extra:
        _bad(key, _join(where, extra[0]), data[extra[0]], "is not a known field")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                _bad(key, _join(where, name), None, "is missing")
            continue
        kwargs[name] = _value(hints[name], data[name], key, _join(where, name))
    return cls(**kwargs)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _value(tp: Any, v: object, key: str, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if v is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _value(inner[0], v, key, where)
    if origin is Literal:
        if v not in get_args(tp):
            _bad(key, where, v, f"is not one of {', '.join(map(str, get_args(tp)))}")
        return v
    if origin is tuple:
        if not isinstance(v, list):
            _bad(key, where, v, "is not a list")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], x, key, f"{where}[{i}]") for i, x in enumerate(v))
        if len(v) != len(args):
            _bad(key, where, v, f"does not have {len(args)} items")
        pairs = enumerate(zip(args, v, strict=True))
        return tuple(_value(a, x, key, f"{where}[{i}]") for i, (a, x) in pairs)
    if dataclasses.is_dataclass(tp):
        return decode(tp, v, key, where)  # type: ignore[arg-type]
    ok = {int: lambda x: isinstance(x, int) and not isinstance(x, bool),
          float: lambda x: isinstance(x, int | float) and not isinstance(x, bool),
          str: lambda x: isinstance(x, str), bool: lambda x: isinstance(x, bool)}
    if tp not in ok:
        raise TypeError(f"no decoder for {tp!r}")  # a model type this module must learn
    if not ok[tp](v):
        _bad(key, where, v, f"is not a {tp.__name__}")
    if tp is str and _CONTROL.search(str(v)):
        # HAProxy's config and runtime API are line-based: no value may add a line.
        _bad(key, where, v, "holds a control character")
    return float(v) if tp is float else v  # type: ignore[arg-type]
