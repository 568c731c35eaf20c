"""Observe everything a desired state touches: Docker on app hosts, HAProxy on LB hosts.

Hosts are read in parallel (each over its own connection); the first host that cannot
be read fails the observation with an ObserveError naming it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from reconciler.errors import ObserveError
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.model import DesiredState, Host, ObservedHost, ObservedLB, ObservedState
from reconciler.observe.docker import observe_host
from reconciler.transport.base import HostKeyRefused, TransportError
from reconciler.transport.pool import Connections

MAX_PARALLEL = 16


def lb_paths(
    desired: DesiredState,
    state_dir: Path,
    external: HAProxyPaths | None = None,
    host: Host | None = None,
) -> HAProxyPaths:
    """The HAProxy files of the environment on an LB host: ``external`` if given, else
    the embedded one (under the state dir here, or under the SSH host's ``state_dir``)."""
    if external is not None:
        return external
    if host is not None and host.ssh is not None:
        return HAProxyPaths.embedded(Path(host.ssh.state_dir), desired.environment)
    return HAProxyPaths.embedded(state_dir, desired.environment)


def observe(
    desired: DesiredState,
    state_dir: Path,
    external: HAProxyPaths | None = None,
    conns: Connections | None = None,
    retired: Iterable[Host] = (),
) -> ObservedState:
    """Read live state afresh. Raises ObserveError naming the host that cannot be read.

    ``retired``: app hosts this environment used before that are no longer in its
    desired state; their containers are read so that the planner removes them (one
    that cannot be reached is left out, not an error)."""
    own = conns is None
    conns = conns or Connections(desired.hosts)
    for h in (*desired.hosts, *retired):
        conns.add(h)
    app_hosts = desired.app_host_names
    apps = [h for h in desired.hosts if h.name in app_hosts] + list(retired)
    gone = {h.name for h in retired}
    lb_names = [name for lb in desired.loadbalancers for name in lb.hosts]
    read_app = partial(_read_app, desired, conns, gone)
    read_lb = partial(_read_lb, desired, conns, state_dir, external)
    try:
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL) as pool:
            # Both submitted before either is awaited: the LB hosts are read (and
            # connected to) alongside the app hosts, not after the slowest of them.
            app_reads = pool.map(read_app, apps)
            lb_reads = pool.map(read_lb, lb_names)
            hosts = [h for h in app_reads if h is not None]
            lbs = list(lb_reads)
    finally:
        if own:
            conns.close()
    return ObservedState(hosts=tuple(hosts), lbs=tuple(lbs), observed_at=time.time())


def _read_app(
    desired: DesiredState, conns: Connections, gone: set[str], host: Host
) -> ObservedHost | None:
    """The Docker side of app host ``host``; None for a host in ``gone`` (retired) that
    cannot be read."""
    wanted = {r.spec.image for s in desired.services if host.name in s.hosts for r in s.releases}
    try:
        return observe_host(host.name, conns.get(host.name).docker(), wanted, desired.instance)
    except (TransportError, ObserveError) as exc:
        if host.name in gone:
            # A retired host that cannot be reached must not block the environment:
            # its servers still leave HAProxy; its containers wait for a later pass.
            return None
        if isinstance(exc, ObserveError):
            raise
        if isinstance(exc, HostKeyRefused):  # names the host and its address already
            raise ObserveError(str(exc)) from None
        raise ObserveError(f"host {host.name}: {exc}") from None


def _read_lb(
    desired: DesiredState,
    conns: Connections,
    state_dir: Path,
    external: HAProxyPaths | None,
    name: str,
) -> ObservedLB:
    """The load balancer of LB host ``name``, read through its port."""
    paths = lb_paths(desired, state_dir, external, desired.host(name))
    try:
        return HAProxy(paths, transport=conns.get(name)).observe()
    except HostKeyRefused as exc:
        raise ObserveError(str(exc)) from None
    except TransportError as exc:
        raise ObserveError(f"LB host {name}: {exc}") from None
