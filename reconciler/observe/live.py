"""Observe everything a desired state touches: Docker on app hosts, HAProxy on LB hosts."""

from __future__ import annotations

from pathlib import Path

from reconciler.errors import ObserveError
from reconciler.haproxy.paths import HAProxyPaths
from reconciler.haproxy.runtime import observe_haproxy
from reconciler.model import DesiredState, ObservedHAProxy, ObservedHost, ObservedState
from reconciler.observe.docker import local_client, observe_host


def lb_paths(
    desired: DesiredState, state_dir: Path, external: HAProxyPaths | None = None
) -> HAProxyPaths:
    """The HAProxy files of the environment: ``external`` if given, else the embedded."""
    return external or HAProxyPaths.embedded(state_dir, desired.environment)


def observe(
    desired: DesiredState, state_dir: Path, external: HAProxyPaths | None = None
) -> ObservedState:
    """Read live state afresh. Raises ObserveError naming the host that cannot be read."""
    hosts: list[ObservedHost] = []
    lbs: list[ObservedHAProxy] = []
    app_hosts = {h for s in desired.services for h in s.hosts}
    for host in desired.hosts:
        if not host.is_local:
            raise ObserveError(
                f"host {host.name}: SSH hosts are not supported by this "
                "version yet; only 'connection: local' hosts can be observed"
            )
        if host.name in app_hosts:
            wanted = {
                r.spec.image for s in desired.services if host.name in s.hosts for r in s.releases
            }
            client = local_client()
            try:
                hosts.append(observe_host(host.name, client, wanted))
            finally:
                client.close()
    for lb in desired.loadbalancers:
        for name in lb.hosts:
            paths = lb_paths(desired, state_dir, external)
            lbs.append(observe_haproxy(name, str(paths.stats_socket), str(paths.config)))
    return ObservedState(hosts=tuple(hosts), haproxy=tuple(lbs))
