"""Test support: build desired states in code, and simulate what a plan does to the world.

``simulate`` is the test's model of the executor: it applies a Plan to an ObservedState
the way a successful run would (containers start healthy on fresh ports, HAProxy takes
the servers it is given). The planner's fixpoint property is checked against it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from reconciler import identity
from reconciler.lb.haproxy.certs import acme_cert_path
from reconciler.lb.haproxy.sections import section_digests
from reconciler.model import (
    CertState,
    ContainerSpec,
    DesiredState,
    Frontend,
    HealthCheck,
    Host,
    LoadBalancer,
    ObservedContainer,
    ObservedHost,
    ObservedLB,
    ObservedState,
    Release,
    Route,
    ServerState,
    Service,
)
from reconciler.plan.actions import (
    AddServer,
    ConfigureLB,
    DrainServer,
    ObtainCertificate,
    PullImage,
    RemoveContainer,
    RemoveServer,
    ReplaceCertificate,
    RepointServer,
    SetWeight,
    StartContainer,
)
from reconciler.plan.planner import Plan


def spec(image: str = "app:v1", env: dict[str, str] | None = None, **kw: object) -> ContainerSpec:
    base = dict(
        image=image,
        port=8080,
        command=None,
        args=None,
        env=tuple(sorted((env or {"GREETING": "hi"}).items())),
        secrets=(),
        health=HealthCheck(kind="http", path="/healthz"),
        volumes=(),
        memory_bytes=None,
        nano_cpus=None,
        restart="unless-stopped",
        logging=None,
        labels=(),
        stop_grace_s=10,
    )
    base.update(kw)
    return ContainerSpec(**base)  # type: ignore[arg-type]


def service(
    name: str = "web",
    releases: list[tuple[str, int]] | None = None,
    replicas: int = 2,
    hosts: tuple[str, ...] = ("h1",),
    env: dict[str, str] | None = None,
) -> Service:
    rels = releases or [("v1", 100)]
    return Service(
        name=name,
        releases=tuple(Release(rev, w, spec(f"app:{rev}", env)) for rev, w in rels),
        replicas=replicas,
        hosts=hosts,
    )


def desired(
    *services: Service,
    hosts: tuple[str, ...] = ("h1",),
    lb_hosts: tuple[str, ...] = ("h1",),
    frontends: tuple[Frontend, ...] | None = None,
    env: str = "prod",
    commit: str = "c0ffee",
) -> DesiredState:
    all_hosts = tuple(sorted(set(hosts) | set(lb_hosts)))
    fe = (
        frontends
        if frontends is not None
        else (
            Frontend(
                name="http",
                bind_address="127.0.0.1",
                bind_port=8080,
                routes=tuple(Route(service=s.name) for s in services[1:]),
                default_service=services[0].name if services else None,
            ),
        )
    )
    return DesiredState(
        environment=env,
        commit=commit,
        hosts=tuple(
            Host(
                name=h,
                address=f"10.0.0.{i + 1}",
                roles=tuple(
                    r
                    for r in ("app", "lb")
                    if (r == "app" and h in hosts) or (r == "lb" and h in lb_hosts)
                ),
            )
            for i, h in enumerate(all_hosts)
        ),
        services=tuple(services),
        loadbalancers=(LoadBalancer(name="edge", hosts=lb_hosts, frontends=fe),)
        if lb_hosts
        else (),
    )


def image_id(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def with_images(obs: ObservedState, d: DesiredState) -> ObservedState:
    """``obs`` with every image of ``d`` present on its hosts."""
    hosts = {h.name: h for h in obs.hosts}
    for s in d.services:
        for h in s.hosts:
            cur = hosts.get(h, ObservedHost(name=h, containers=()))
            imgs = dict(cur.images) | {r.spec.image: image_id(r.spec.image) for r in s.releases}
            hosts[h] = replace(cur, images=tuple(sorted(imgs.items())))
    return replace(obs, hosts=tuple(hosts[k] for k in sorted(hosts)))


def simulate(plan: Plan, obs: ObservedState, d: DesiredState) -> ObservedState:
    """The world after a successful run of ``plan``."""
    hosts = {h.name: h for h in obs.hosts}
    lbs = {h.host: h for h in obs.lbs}
    address = {h.name: h.address for h in d.hosts}
    renamed: dict[str, str] = {}
    next_port = 40000 + sum(len(h.containers) for h in obs.hosts) * 7

    def host(name: str) -> ObservedHost:
        return hosts.get(name, ObservedHost(name=name, containers=()))

    for a in plan.actions:
        if isinstance(a, PullImage):
            h = host(a.host)
            imgs = dict(h.images) | {a.image: image_id(a.image)}
            hosts[a.host] = replace(h, images=tuple(sorted(imgs.items())))
        elif isinstance(a, RemoveContainer):
            h = host(a.host)
            hosts[a.host] = replace(
                h, containers=tuple(c for c in h.containers if c.name != a.name)
            )
        elif isinstance(a, StartContainer):
            assert a.spec is not None
            h = host(a.host)
            iid = a.image_id or dict(h.images)[a.spec.image]
            chash = identity.config_hash(plan.environment, a.service or "", a.revision, a.spec, iid)
            name = identity.container_name(
                plan.environment, a.service or "", a.revision, chash, a.replica
            )
            renamed[a.name] = name
            labels = identity.container_labels(
                plan.environment,
                a.service or "",
                a.revision,
                chash,
                a.replica,
                plan.commit,
                a.spec,
                iid,
            )
            next_port += 1
            c = ObservedContainer(
                id=f"id-{name}",
                name=name,
                labels=tuple(sorted(labels.items())),
                status="running",
                health="healthy",
                image_id=iid,
                published=(address[a.host], next_port),
            )
            assert all(x.name != name for x in h.containers), f"duplicate container {name}"
            hosts[a.host] = replace(h, containers=(*h.containers, c))
            # a new container under a known name: HAProxy's checks of it start afresh
            srv = identity.server_name(a.host, name)
            for k, lb in lbs.items():
                lbs[k] = replace(lb, stats=tuple(st for st in lb.stats if st.server != srv))
        elif isinstance(a, AddServer):
            name = renamed.get(a.container, a.container)
            c = next(c for c in host(a.app_host).containers if c.name == name)
            assert c.published is not None
            lb = lbs.get(a.host, ObservedLB(host=a.host, running=False))
            srv = ServerState(
                backend=a.backend,
                server=identity.server_name(a.app_host, name),
                address=c.published[0],
                port=c.published[1],
                weight=a.weight,
                operational="running",
                admin=(),
            )
            lbs[a.host] = replace(lb, servers=(*lb.servers, srv))
        elif isinstance(a, SetWeight | DrainServer | RemoveServer):
            lb = lbs[a.host]
            servers = []
            for s in lb.servers:
                if (s.backend, s.server) == (a.backend, a.server):
                    if isinstance(a, SetWeight):
                        s = replace(s, weight=a.weight, admin=())
                    elif isinstance(a, DrainServer):
                        s = replace(s, weight=0, admin=("drain",))
                    else:
                        continue
                servers.append(s)
            lbs[a.host] = replace(lb, servers=tuple(servers))
        elif isinstance(a, RepointServer):
            name = renamed.get(a.container, a.container)
            c = next(c for c in host(a.app_host).containers if c.name == name)
            assert c.published is not None
            lb = lbs[a.host]
            servers = tuple(
                replace(s, address=c.published[0], port=c.published[1])
                if (s.backend, s.server) == (a.backend, a.server) else s
                for s in lb.servers
            )
            # HAProxy's check of the new address starts afresh (the executor waits for UP)
            stats = tuple(st for st in lb.stats if (st.backend, st.server) != (a.backend, a.server))
            lbs[a.host] = replace(lb, servers=servers, stats=stats)
        elif isinstance(a, ConfigureLB):
            # Like the executor: the config says what HAProxy has (no address changes:
            # only AddServer and RepointServer place a server).
            lb = lbs.get(a.host, ObservedLB(host=a.host, running=False))
            lbdef = next(x for x in d.loadbalancers if a.host in x.hosts)
            servers = lb.servers
            lb = replace(lb, acme_dir=f"/state/{a.host}/acme")
            certs = lb.certificates
            if a.reload or not lb.running:  # a (re)start reads every certificate file
                certs = loaded_certificates(lb, lbdef)
            lbs[a.host] = replace(
                lb, running=True, servers=servers, config_sections=section_digests(d, lbdef),
                config_servers=tuple(sorted((s.backend, s.server, s.address, s.port, s.weight)
                                            for s in servers)),
                certificates=certs,
            )
        elif isinstance(a, ObtainCertificate):  # a good certificate, served
            lb = lbs[a.host]
            path = acme_cert_path(lb.acme_dir, a.frontend)
            issued = cert_file(path, f"acme-{a.source or a.host}-{plan.commit}")
            issued = replace(issued, file_names=tuple(sorted(a.domains)),
                             file_validity=(obs.observed_at - 1, obs.observed_at + 90 * 86400))
            if a.source:  # the very file of the source host
                src = lbs[a.source].certificate(acme_cert_path(lbs[a.source].acme_dir, a.frontend))
                assert src is not None
                issued = replace(src, path=path)
            issued = replace(issued, loaded_serial=issued.file_serial,
                             loaded_fingerprint=issued.file_fingerprint)
            lbs[a.host] = replace(lb, certificates=(
                *(c for c in lb.certificates if c.path != path), issued))
        elif isinstance(a, ReplaceCertificate):
            lb = lbs[a.host]
            lbs[a.host] = replace(lb, certificates=tuple(
                replace(c, loaded_serial=c.file_serial, loaded_fingerprint=c.file_fingerprint)
                if c.path == a.path else c for c in lb.certificates))
        else:  # pragma: no cover - a new action type must be simulated
            raise AssertionError(f"unknown action {a!r}")
    return ObservedState(
        hosts=tuple(hosts[k] for k in sorted(hosts)), lbs=tuple(lbs[k] for k in sorted(lbs)),
        observed_at=obs.observed_at,
    )


def cert_file(path: str, serial: str = "1") -> CertState:
    """A certificate file at ``path`` (facts made up from path and serial), not loaded."""
    fp = f"FP-{serial}-{path}"
    return CertState(path=path, file_digest=f"d{serial}{path}", file_serial=serial,
                     file_fingerprint=fp, file_validity=(0.0, 4e9))


def loaded_certificates(lb: ObservedLB, lbdef: LoadBalancer) -> tuple[CertState, ...]:
    """What a started HAProxy loads: each certificate path's file as it is (a file the
    world has no state for yet gets serial 1)."""
    paths = sorted({fe.tls_certificate for fe in lbdef.frontends if fe.tls_certificate})
    acme = sorted(acme_cert_path(lb.acme_dir, fe.name) for fe in lbdef.frontends if fe.tls_acme)
    out = []
    for path in [*paths, *acme]:
        # an ACME frontend without a certificate yet starts on an expired placeholder
        c = lb.certificate(path) or (cert_file(path, "placeholder") if path in acme
                                     else cert_file(path))
        out.append(replace(c, loaded_serial=c.file_serial, loaded_fingerprint=c.file_fingerprint))
    return tuple(out)


def converge(d: DesiredState, obs: ObservedState | None = None) -> ObservedState:
    """The world after applying ``d`` to ``obs`` (empty by default), images present."""
    from reconciler.plan.planner import plan

    world = with_images(obs or ObservedState(), d)
    return simulate(plan(d, world), world, d)
