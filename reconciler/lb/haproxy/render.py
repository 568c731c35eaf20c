"""Render the whole HAProxy config of one load balancer. Pure: same input, same bytes.

Every value written here was validated by the manifests' safety rules (names, paths,
host names), so nothing needs quoting. The header lines carry the section digests the
planner compares; servers are written with their current weights so that a reload keeps
them (the server-state file keeps admin states such as drain).

Each server line carries its own check options (``server_args``), no ``default-server``:
a server added at runtime (``add server``) takes nothing from ``default-server``, so the
same function writes both, and the runtime and the file cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from reconciler.health import LBCheck, kind_of
from reconciler.identity import backend_name, frontend_name, section_marker
from reconciler.lb.haproxy.certs import (
    CHALLENGE_PREFIX,
    acme_cert_path,
    acme_files_dir,
    challenge_map,
)
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.lb.haproxy.privileges import RunAs
from reconciler.lb.haproxy.requestlog import LOG_FORMAT, RING
from reconciler.lb.haproxy.sections import request_log, section_digests
from reconciler.lb.port import ServerEntry
from reconciler.model import DesiredState, Frontend, LoadBalancer, Service


def _ms(value: int) -> str:
    return f"{value}ms" if value % 1000 else f"{value // 1000}s"


def render(
    desired: DesiredState,
    lb: LoadBalancer,
    servers: Iterable[ServerEntry],
    paths: HAProxyPaths,
    run_as: RunAs | None = None,
) -> str:
    """The config text. Backends: every desired service, plus any backend that still has
    servers (a removed service whose servers are being drained). ``run_as``: the user,
    group and chroot of the workers (``reconciler.lb.haproxy.privileges``; None: as the
    user that starts HAProxy)."""
    by_backend: dict[str, list[ServerEntry]] = defaultdict(list)
    for srv in servers:
        by_backend[srv.backend].append(srv)
    services = {backend_name(s.name): s for s in desired.services}
    drain_max = max((s.drain_timeout_s for s in desired.services), default=30)
    out = [section_marker(name, digest) for name, digest in section_digests(desired, lb)]
    out += [
        f"# HAProxy config of load balancer {lb.name}, environment {desired.environment}.",
        "# Written by reconciler; do not edit: the next pass replaces this file.",
        "",
        "global",
        f"    stats socket {paths.stats_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    server-state-file {paths.server_state}",
        # Old workers finish their requests, but never linger forever after a reload.
        f"    hard-stop-after {drain_max + 60}s",
        *(run_as.global_lines() if run_as else []),
        "",
        *_request_log(lb),
        "defaults",
        "    mode http",
        "    option redispatch",
        "    retries 3",
        # A request on a reused server connection that the server just closed is retried
        # elsewhere instead of answered with a 502 (safe: nothing was processed).
        "    retry-on conn-failure empty-response",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    load-server-state-from-file global",
        *_log_lines(lb),
        "",
    ]
    acme_dir = acme_files_dir(str(paths.root))
    challenges = any(fe.tls_acme for fe in lb.frontends)
    for fe in lb.frontends:
        out += _frontend(fe, acme_dir, challenges)
    for name in sorted(set(services) | set(by_backend)):
        out += _backend(
            name, services.get(name), sorted(by_backend.get(name, []), key=lambda s: s.name)
        )
    return "\n".join(out) + "\n"


def _request_log(lb: LoadBalancer) -> list[str]:
    """A ring buffer for the request log, read through the stats socket (``show
    events``): request records and canary analysis. 8 MiB hold about 40,000 requests,
    several seconds at HAProxy's limit here; a longer line is cut at ``maxlen``."""
    if not request_log(lb):
        return []
    return [f"ring {RING}", "    format raw", "    maxlen 512", "    size 8388608", ""]


def _log_lines(lb: LoadBalancer) -> list[str]:
    """Where the request log goes (the ring, a syslog server) and its format."""
    lines = [f"    log ring@{RING} local0 info"] if request_log(lb) else []
    if lb.syslog:
        t = lb.syslog
        lines.append(f"    log {t.address} len 1024 format {t.format} {t.facility} info")
    return [*lines, f'    log-format "{LOG_FORMAT}"'] if lines else []


def _frontend(fe: Frontend, acme_dir: str, challenges: bool) -> list[str]:
    """A frontend. ``challenges``: a frontend of the load balancer gets its certificates
    from ACME, so every plain HTTP frontend answers HTTP-01 challenges first, from the
    map the reconciler fills at runtime (``add map``; no reload)."""
    bind = f"{'' if fe.bind_address == '*' else fe.bind_address}:{fe.bind_port}"
    if fe.tls_certificate:
        bind += f" ssl crt {fe.tls_certificate}"
    elif fe.tls_acme:
        bind += f" ssl crt {acme_cert_path(acme_dir, fe.name)}"
    lines = [
        f"frontend {frontend_name(fe.name)}",
        f"    bind {bind}",
        f"    timeout client {_ms(fe.client_timeout_ms)}",
        "    option forwardfor",
    ]
    if challenges and not (fe.tls_certificate or fe.tls_acme):
        token = f"path,field(4,/),map({challenge_map(acme_dir)})"
        lines.append(
            f'    http-request return status 200 content-type text/plain lf-string "%[{token}]"'
            f" if {{ path_beg {CHALLENGE_PREFIX} }} {{ {token} -m found }}"
        )
    if fe.redirect_https:
        lines.append("    http-request redirect scheme https code 301 if !{ ssl_fc }")
    for i, route in enumerate(fe.routes):
        conds = []
        if route.host:
            host = route.host.lower()
            if host.startswith("*."):
                lines.append(f"    acl r{i}_host req.hdr(host),field(1,:),lower -m end {host[1:]}")
            else:
                lines.append(f"    acl r{i}_host req.hdr(host),field(1,:),lower -m str {host}")
            conds.append(f"r{i}_host")
        if route.path_prefix:
            lines.append(f"    acl r{i}_path path_beg {route.path_prefix}")
            conds.append(f"r{i}_path")
        lines.append(f"    use_backend {backend_name(route.service)} if {' '.join(conds)}")
    if fe.default_service:
        lines.append(f"    default_backend {backend_name(fe.default_service)}")
    return [*lines, ""]


DOWN_INTER_MS = 50  # checks of a server in maintenance or DOWN (see server_args)


def _health_lines(check: LBCheck | None) -> list[str]:
    """HAProxy's backend lines of the LB-neutral ``check`` (None: HAProxy's default TCP
    check); the per-server options are ``server_args``'s."""
    if check is None:
        return []
    lines = []
    if check.kind == "http":
        lines.append(f"    option httpchk GET {check.path}")
    lines.append(f"    timeout check {_ms(check.timeout_ms)}")
    return lines


def lb_check(svc: Service | None) -> LBCheck | None:
    """The check HAProxy runs on the servers of ``svc`` (None: a removed service's
    backend, or a kind without its own LB check: HAProxy's TCP check, 2 s)."""
    return None if svc is None else kind_of(svc.health).lb_check(svc.health)


def server_args(address: str, port: int, weight: int, check: LBCheck | None) -> str:
    """What follows the server name, in the config's ``server`` line and in the runtime
    API's ``add server``: address, weight and check options (``check``: ``lb_check``)."""
    inter_ms, fall = (2000, 3) if check is None else (check.interval_ms, check.retries)
    # downinter: HAProxy ticks a server's checks from ``add server`` on, while it is in
    # maintenance (how a server added at runtime starts) at its down interval: without
    # one, the first check after ``enable health`` came up to a whole ``inter`` later
    # (1 s of every release switch). A DOWN server is probed that often too; it still
    # needs ``rise 2`` good checks in a row to come back.
    down = _ms(min(inter_ms, DOWN_INTER_MS))
    return (
        f"{address}:{port} weight {weight} check inter {_ms(inter_ms)} downinter {down} "
        f"fall {fall} rise 2"
    )


def _backend(name: str, svc: Service | None, servers: list[ServerEntry]) -> list[str]:
    lines = [f"backend {name}"]
    if svc is None:
        lines += ["    balance roundrobin"]
    else:
        t = svc.timeouts
        lines += [
            f"    balance {svc.balance}",
            f"    timeout connect {_ms(t.connect_ms)}",
            f"    timeout server {_ms(t.server_ms)}",
            f"    timeout queue {_ms(t.queue_ms)}",
        ]
        lines += _health_lines(lb_check(svc))
    check = lb_check(svc)
    lines += [
        f"    server {s.name} {server_args(s.address, s.port, s.weight, check)}" for s in servers
    ]
    return [*lines, ""]
