"""The planner's two sides of the pool configuration in etcd. Pure.

- ``publication``: what the leader publishes from desired and observed state: each
  backend's pool is the servers the planner wants HAProxy to have whose container runs
  and publishes its port (a container not started yet is not in any pool; one that is
  retiring is left out, so the agents drain and delete it), and each load balancer's
  structure.
- ``agent_plan``: what an LB agent does to its own HAProxy to serve the published
  pools: the LB part of the planner (``plan.lb``), with the pools as its wanted
  servers. A reload only where the structure (section digests) changed; everything
  else through the runtime API and the config file.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from reconciler import identity
from reconciler.cluster.lbconfig import (
    Pool,
    PoolServer,
    Publication,
    Structure,
    desired_for,
    structure_of,
)
from reconciler.model import DesiredState, ObservedLB, ObservedState
from reconciler.plan.containers import plan_containers
from reconciler.plan.lb import plan_lb
from reconciler.plan.phases import Phases, WantedServer
from reconciler.plan.planner import Plan


def publication(desired: DesiredState, observed: ObservedState, frozen: Collection[str] = (),
                published: Mapping[str, Pool] | None = None) -> Publication:
    """The pools and structures of ``desired`` over what runs (``observed``).

    ``frozen``: app hosts left as they are (a later rollout batch, a failed batch, a
    host whose agent does not report): their servers are the ones ``published`` has
    now (backend -> pool), whatever ``observed`` says, so a silent agent's containers
    keep their traffic and a later batch keeps its old release's weights."""
    ph = Phases()
    plan_containers(ph, desired, observed, {}, frozen)
    revisions = {
        (h.name, c.name): c.label(identity.REVISION) for h in observed.hosts for c in h.containers
    }
    pools = []
    for svc in desired.services:
        backend = identity.backend_name(svc.name)
        servers = tuple(
            PoolServer(
                name=s.name,
                app_host=s.app_host,
                container=s.container,
                address=s.address,
                port=s.port,
                weight=s.weight,
                revision=revisions.get((s.app_host, s.container), ""),
            )
            for s in ph.servers
            if s.backend == backend and s.port is not None
        ) + tuple(s for s in (published or {}).get(backend, Pool(backend, svc.name, ())).servers
                  if s.app_host in frozen)
        pools.append(Pool(backend, svc.name, tuple(sorted(servers, key=lambda x: x.name))))
    structures = tuple(structure_of(desired, lb) for lb in desired.loadbalancers)
    return Publication(structures, tuple(pools))


def wanted_servers(pools: Iterable[Pool]) -> list[WantedServer]:
    """The servers of ``pools`` as the LB planner wants them (a draining one at 0)."""
    return [
        WantedServer(
            backend=p.backend,
            name=s.name,
            container=s.container,
            service=p.service,
            app_host=s.app_host,
            address=s.address,
            port=s.port,
            weight=0 if s.state == "drain" else s.weight,
            reason=f"in the published pool (release {s.revision or '?'})",
        )
        for p in sorted(pools, key=lambda p: p.backend)
        for s in p.servers
    ]


def agent_plan(structure: Structure, pools: Iterable[Pool], obs: ObservedLB) -> Plan:
    """The actions that make the HAProxy of LB host ``obs.host`` serve ``pools`` with
    the config ``structure`` describes (``obs.host`` must be one of its hosts)."""
    desired = desired_for(structure)
    ph = Phases()
    ph.servers.extend(wanted_servers(pools))
    for s in obs.servers:
        ph.retiring.setdefault(s.server, "not in the published pool")
    plan_lb(ph, desired, structure.loadbalancer, obs, set(), set())
    return Plan(environment=desired.environment, commit=desired.commit, actions=ph.ordered())
