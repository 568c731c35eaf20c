"""One LoadBalancer of one environment: the LoadBalancer manifest with the Environment's
override applied, its frontends checked (routes to known, enabled services; TLS and
redirects; binds) and turned into a frozen ``model.LoadBalancer``; then the rules across
load balancers (one per host, no two frontends of a host on the same address:port).

Pure. Problems are appended to the caller's list, each naming the file, line and field
where the value came from (the LoadBalancer manifest, or the Environment that overrode it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.desired import safety
from reconciler.desired.loader import At, Document, Path
from reconciler.desired.service import HostCheck
from reconciler.desired.units import duration_ms
from reconciler.errors import Problem
from reconciler.model import AcmeSpec, Frontend, LoadBalancer, Route, Service, SyslogTarget

if TYPE_CHECKING:
    from reconciler.desired.manifests import Manifests

HOSTS_KEY = "#hosts"  # where an LB's hosts came from, beside its frontends' binds


def loadbalancer(
    doc: Document,
    env_doc: Document | None,
    env_data: dict[str, Any],
    env_name: str,
    services: dict[str, Service],
    m: Manifests,
    check_hosts: HostCheck,
    problems: list[Problem],
) -> tuple[LoadBalancer, dict[str, At]]:
    """The LB with its frontends resolved, and where each frontend's bind came from (its
    hosts' origin under ``HOSTS_KEY``). ``services``: the environment's enabled services.
    Problems are appended to ``problems``; the LB is returned even then."""
    data = doc.data
    name = data["name"]
    override = env_data.get("loadbalancers", {}).get(name, {})
    if "hosts" in override and env_doc is not None:
        host_names, hosts_at = override["hosts"], At(env_doc, ("loadbalancers", name, "hosts"))
    else:
        host_names, hosts_at = data["hosts"], At(doc, ("hosts",))
    check_hosts(host_names, hosts_at, "lb", f"load balancer {name!r}")
    fe_overrides = override.get("frontends", {})
    has_tls = any("tls" in {**fe, **fe_overrides.get(fe["name"], {})} for fe in data["frontends"])
    ctx = _Context(services, m, f" in environment {env_name!r}", has_tls, problems)
    frontends = []
    bind_at: dict[str, At] = {}
    for i, base in enumerate(data["frontends"]):
        where = _Where(doc, env_doc, i, base["name"], fe_overrides.get(base["name"], {}))
        fe = {**base, **where.override}
        frontends.append(_frontend(fe, where, ctx))
        bind_at[fe["name"]] = where.at("bind")
    lb = LoadBalancer(
        name=name,
        hosts=tuple(sorted(host_names)),
        frontends=tuple(frontends),
        request_records=data.get("request_records", True),
        syslog=_syslog(data.get("syslog"), At(doc, ("syslog", "address")), problems),
    )
    bind_at[HOSTS_KEY] = hosts_at
    return lb, bind_at


def _syslog(data: dict[str, Any] | None, at: At, problems: list[Problem]) -> SyslogTarget | None:
    """The syslog target; an address whose octets or port are out of range is a problem."""
    if data is None:
        return None
    host, _, port = data["address"].rpartition(":")
    if any(int(o) > 255 for o in host.split(".")) or not 0 < int(port) < 65536:
        problems.append(at.problem(f"syslog address {data['address']!r} is not a valid IPv4:port"))
    return SyslogTarget(
        data["address"], data.get("facility", "local0"), data.get("format", "rfc3164")
    )


@dataclass(frozen=True)
class _Where:
    """Where a key of frontend ``i`` (named ``name``) came from: the Environment's
    ``override`` of it, else the LoadBalancer manifest ``doc``."""

    doc: Document
    env_doc: Document | None
    i: int
    name: str
    override: dict[str, Any]

    def at(self, key: str) -> At:
        if key in self.override and self.env_doc is not None:
            lb_name = self.doc.data["name"]
            return At(self.env_doc, ("loadbalancers", lb_name, "frontends", self.name, key))
        return At(self.doc, ("frontends", self.i, key))

    def base(self, *sub: str | int) -> Path:
        """A path in the LoadBalancer manifest, under this frontend."""
        return ("frontends", self.i, *sub)


@dataclass(frozen=True)
class _Context:
    """What every frontend of one LB is checked against, and where problems go."""

    services: dict[str, Service]  # the environment's enabled services
    m: Manifests
    in_env: str
    has_tls: bool  # some frontend of the LB has TLS
    problems: list[Problem]

    def service_ref(self, name: str, at: At) -> None:
        """A route or default to a service that exists and is enabled here."""
        if not self.m.known("Service", name):
            self.problems.append(at.problem(self.m.unknown("service", name)))
        elif name not in self.services and name in self.m.services:
            self.problems.append(
                at.problem(f"routes to service {name!r}, which is disabled{self.in_env}")
            )


def _frontend(fe: dict[str, Any], where: _Where, ctx: _Context) -> Frontend:
    """One frontend (``fe``: the manifest's, override applied), checked."""
    _check_routes(fe, where, ctx)
    cert = fe.get("tls", {}).get("certificate")
    if cert is not None and (why := safety.absolute_path(cert, haproxy=True)):
        ctx.problems.append(where.at("tls").problem(f"{cert!r} {why}", "certificate"))
    _check_redirect(fe, where, ctx)
    address, _, port = fe["bind"].rpartition(":")
    if why := safety.ipv4_if_numeric(address):
        ctx.problems.append(where.at("bind").problem(f"{fe['bind']!r}: {address} {why}"))
    if not 1 <= int(port) <= 65535:
        ctx.problems.append(
            where.at("bind").problem(f"{fe['bind']!r} has port {port} outside 1-65535")
        )
    return Frontend(
        name=fe["name"],
        bind_address=address or "*",
        bind_port=int(port),
        routes=tuple(
            Route(service=r["service"], host=r.get("host"), path_prefix=r.get("path_prefix"))
            for r in fe.get("routes", [])
        ),
        default_service=fe.get("default_service"),
        tls_certificate=cert,
        tls_acme=_acme(fe.get("tls", {}).get("acme")),
        redirect_https=fe.get("redirect_https", False),
        client_timeout_ms=duration_ms(fe.get("client_timeout", "30s")),
    )


def _acme(acme: dict[str, Any] | None) -> AcmeSpec | None:
    """The ``tls.acme`` of a frontend (the schema checked its values)."""
    if acme is None:
        return None
    return AcmeSpec(
        directory=acme["directory"], domains=tuple(acme["domains"]), email=acme.get("email")
    )


def _check_routes(fe: dict[str, Any], where: _Where, ctx: _Context) -> None:
    """Routes name known, enabled services by safe path prefixes; a frontend without a
    route or a default service must redirect."""
    for j, route in enumerate(fe.get("routes", [])):
        ctx.service_ref(route["service"], At(where.doc, where.base("routes", j, "service")))
        if "path_prefix" in route and (why := safety.path_prefix(route["path_prefix"])):
            ctx.problems.append(
                where.doc.problem(
                    where.base("routes", j, "path_prefix"), f"{route['path_prefix']!r} {why}"
                )
            )
    if "default_service" in fe:
        ctx.service_ref(fe["default_service"], where.at("default_service"))
    elif not fe.get("routes") and not fe.get("redirect_https"):
        ctx.problems.append(
            At(where.doc, where.base()).problem(
                f"frontend {fe['name']!r} has no routes and no default_service"
            )
        )


def _check_redirect(fe: dict[str, Any], where: _Where, ctx: _Context) -> None:
    """redirect_https only on a plain frontend of an LB that has a TLS one."""
    if not fe.get("redirect_https"):
        return
    if "tls" in fe:
        ctx.problems.append(
            where.at("redirect_https").problem(
                "redirect_https on a TLS frontend would redirect to itself"
            )
        )
    elif not ctx.has_tls:
        lb_name = where.doc.data["name"]
        ctx.problems.append(
            where.at("redirect_https").problem(
                f"redirect_https needs a frontend with tls in load balancer {lb_name!r}"
            )
        )


def check_lb_hosts_and_ports(
    lbs: list[tuple[LoadBalancer, dict[str, At]]], env_name: str, problems: list[Problem]
) -> None:
    """One LB per host; no two frontends of a host bind overlapping address:port."""
    owner: dict[str, str] = {}
    binds: dict[tuple[str, int], list[tuple[str, str, At]]] = defaultdict(list)
    for lb, bind_at in lbs:
        for host in lb.hosts:
            if host in owner:
                problems.append(
                    bind_at[HOSTS_KEY].problem(
                        f"host {host!r} runs both load balancers {owner[host]!r} and {lb.name!r} "
                        f"in environment {env_name!r}; one HAProxy per host"
                    )
                )
            owner[host] = lb.name
            for fe in lb.frontends:
                for addr, other, other_at in binds[(host, fe.bind_port)]:
                    wildcard = {"*", "0.0.0.0"}  # noqa: S104 - the wildcard, not a bind
                    if wildcard & {addr, fe.bind_address} or addr == fe.bind_address:
                        problems.append(
                            bind_at[fe.name].problem(
                                f"{fe.bind_address}:{fe.bind_port} clashes with frontend {other!r} "
                                f"({other_at.doc.file}:{other_at.doc.where(other_at.path)[0]}) on "
                                f"host {host!r} in environment {env_name!r}"
                            )
                        )
                binds[(host, fe.bind_port)].append((fe.bind_address, fe.name, bind_at[fe.name]))
