"""The planner against the whole model: every field of a container's spec, services'
balance/timeouts/drain, frontends and routes, load-balancer placement, canaries, held
services and frozen hosts; and a world perturbed in every way the observers can report
(containers exited, gone, unhealthy or DOWN in HAProxy; a tag moved to a new image;
servers missing, extra, drained, in maintenance or at a wrong weight; a stale config
file; HAProxy down).

The outcome is checked against the *desired state*, not only against the fixed point of
the test's own simulator: ``reconciler.plan.verify.verify`` (the pass's own outcome check)
must hold, the containers that run are exactly the desired ones (by the identity
functions: service, revision, config hash with the image id, replica), a deleted
service or a retired host keeps none, HAProxy's weights are the desired ones, held
services and frozen hosts are left exactly as they ran; and the plan of that world is
empty. Strategies for the spec are keyed by the model's own fields: a new field fails
the test until it is varied here.
"""

from __future__ import annotations

import itertools
from dataclasses import fields, replace

import pytest
from hypothesis import HealthCheck as HypothesisHealth
from hypothesis import given, settings
from hypothesis import strategies as st
from support import converge, desired, image_id, simulate, with_images

from reconciler import identity
from reconciler.model import (
    CanaryPolicy,
    CanaryStep,
    ContainerSpec,
    DesiredState,
    Frontend,
    HealthCheck,
    Logging,
    ObservedState,
    Release,
    Route,
    SecretRef,
    ServerState,
    ServerStats,
    Service,
    Timeouts,
    Volume,
)
from reconciler.plan.planner import plan
from reconciler.plan.verify import verify
from reconciler.present.output import plan_text

HOSTS = ("h1", "h2", "h3")
NAMES = ("web", "api", "worker", "admin")

# Every field of ContainerSpec, each with the values it is varied through ("image" is
# drawn per release from its revision).
SPEC_FIELDS = {
    "image": st.sampled_from(["app", "registry.example:5000/team/app"]),
    "port": st.sampled_from([8080, 9090]),
    "command": st.sampled_from([None, ("/app",), ("/app", "--fast")]),
    "args": st.sampled_from([None, ("serve",)]),
    "env": st.dictionaries(st.sampled_from(["GREETING", "LEVEL", "DB_TOKEN"]),
                           st.sampled_from(["hi", "bonjour", "x"]), max_size=3).map(
        lambda d: tuple(sorted(d.items()))),
    "secrets": st.sampled_from([
        (),
        (SecretRef("DB_PASSWORD", "env", "DB_PASSWORD"),),
        (SecretRef("DB_PASSWORD", "file", "/etc/s/db", version="2"),),
    ]),
    "health": st.sampled_from([
        HealthCheck(kind="http", path="/healthz"),
        HealthCheck(kind="http", path="/ready", interval_ms=500, retries=5),
        HealthCheck(kind="command", command=("/bin/true",)),
        HealthCheck(kind="none"),
    ]),
    "volumes": st.sampled_from([
        (),
        (Volume("volume", "data", "/data"),),
        (Volume("bind", "/srv/app", "/srv", read_only=True),),
    ]),
    "memory_bytes": st.sampled_from([None, 64 << 20]),
    "nano_cpus": st.sampled_from([None, 500_000_000]),
    "restart": st.sampled_from(["unless-stopped", "always", "no"]),
    "logging": st.sampled_from([None, Logging("json-file", (("max-size", "10m"),))]),
    "labels": st.sampled_from([(), (("team", "web"),)]),
    "stop_grace_s": st.sampled_from([1, 10, 30]),
}


def test_every_spec_field_is_varied() -> None:
    assert set(SPEC_FIELDS) == {f.name for f in fields(ContainerSpec)}


@st.composite
def specs(draw, revision: str) -> ContainerSpec:  # type: ignore[no-untyped-def]
    values = {name: draw(strategy) for name, strategy in SPEC_FIELDS.items()}
    values["image"] = f"{values['image']}:{revision}"
    return ContainerSpec(**values)


SPECS = {r: specs(r) for r in ("v1", "v2", "v3")}
POLICY = CanaryPolicy(steps=(CanaryStep(20), CanaryStep(100)))


# Strategies built once (building one per draw was a fifth of the test's time).
REVISIONS = st.lists(st.sampled_from(["v1", "v2", "v3"]), min_size=1, max_size=3, unique=True)
CUTS = [st.lists(st.integers(0, 100), min_size=n, max_size=n) for n in range(3)]
HOST_SETS = {hosts: st.lists(st.sampled_from(hosts), min_size=1, unique=True)
             for n in range(1, len(HOSTS) + 1) for hosts in itertools.permutations(HOSTS, n)}
REPLICAS = st.integers(0, 3)
BALANCES = st.sampled_from(["roundrobin", "leastconn", "random"])
TIMEOUTS = st.sampled_from([Timeouts(), Timeouts(connect_ms=2000, server_ms=5000)])
DRAINS = st.sampled_from([1, 10, 30])


@st.composite
def services(draw, name: str, app_hosts: tuple[str, ...]) -> Service:  # type: ignore[no-untyped-def]
    revs = draw(REVISIONS)
    if len(revs) == 2 and draw(st.booleans()):  # a canary at 0 next to its baseline
        weights, canary = [100, 0], [None, POLICY]
    else:
        cuts = sorted(draw(CUTS[len(revs) - 1]))
        weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
        canary = [None] * len(revs)
    return Service(
        name=name,
        releases=tuple(Release(r, w, draw(SPECS[r]), canary=c)
                       for r, w, c in zip(revs, weights, canary, strict=True)),
        replicas=draw(REPLICAS),
        hosts=tuple(draw(HOST_SETS[app_hosts])),
        balance=draw(BALANCES),
        timeouts=draw(TIMEOUTS),
        drain_timeout_s=draw(DRAINS),
    )


@st.composite
def states(draw) -> DesiredState:  # type: ignore[no-untyped-def]
    app_hosts = tuple(draw(st.lists(st.sampled_from(HOSTS), min_size=1, unique=True)))
    lb_hosts = tuple(draw(st.lists(st.sampled_from(HOSTS), min_size=1, max_size=2,
                                   unique=True)))
    chosen = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    svcs = [draw(services(n, app_hosts)) for n in chosen]
    routes = tuple(
        Route(service=s.name, **draw(st.sampled_from([
            {"path_prefix": f"/{s.name}"}, {"host": f"{s.name}.example"},
            {"host": f"{s.name}.example", "path_prefix": "/v1"}])))
        for s in svcs[1:])
    frontends = [Frontend("http", "127.0.0.1", 8080, routes, default_service=svcs[0].name)]
    if draw(st.booleans()):
        frontends.append(Frontend("https", "0.0.0.0", 8443, (), default_service=svcs[-1].name,
                                  tls_certificate="/etc/haproxy/site.pem"))
        frontends[0] = replace(frontends[0], redirect_https=draw(st.booleans()))
    commit = draw(st.sampled_from(["c0ffee", "beef42"]))
    d = desired(*svcs, hosts=app_hosts, lb_hosts=lb_hosts, frontends=tuple(frontends),
                commit=commit)
    # a host keeps its address from one desired state to the next (a moved host is not
    # modelled by the simulator: its running containers keep their published address)
    return replace(d, hosts=tuple(replace(h, address=f"10.0.0.{HOSTS.index(h.name) + 1}")
                                  for h in d.hosts))


CONTAINER_FATES = st.sampled_from(
    ["keep", "keep", "keep", "exited", "gone", "unhealthy", "starting"])
ONE_IN_TEN = st.integers(0, 9)
SERVER_FATES = st.sampled_from(["keep", "keep", "weight", "drain", "maint", "gone", "moved",
                                "down"])
WEIGHTS = st.integers(0, 256)
STALENESS = st.sampled_from(["fresh", "fresh", "servers", "sections", "none"])


@st.composite
def perturbed(draw, world: ObservedState, frozen: frozenset[str],  # type: ignore[no-untyped-def]
              held: frozenset[str]) -> ObservedState:
    """Crash and drift in every form the observers report. The containers and servers
    of a frozen app host or of a held service stay as they were: the pass leaves them
    as they run (and the outcome check would rightly report their drift)."""
    held_backends = {identity.backend_name(n) for n in held}
    hosts = []
    for h in world.hosts:
        if h.name in frozen:
            hosts.append(h)
            continue
        cs = []
        for c in h.containers:
            if c.label(identity.SERVICE) in held:
                cs.append(c)
                continue
            fate = draw(CONTAINER_FATES)
            if fate == "exited":
                cs.append(replace(c, status="exited"))
            elif fate in ("unhealthy", "starting"):
                cs.append(replace(c, health=fate))
            elif fate == "keep":
                cs.append(c)
        images = dict(h.images)
        for ref in sorted(images):
            if draw(ONE_IN_TEN) == 0:  # the tag moved to another image
                images[ref] = image_id(ref + "@moved")
        hosts.append(replace(h, containers=tuple(cs), images=tuple(sorted(images.items()))))
    lbs = []
    for lb in world.lbs:
        if draw(ONE_IN_TEN) == 0:  # HAProxy is not running
            lbs.append(replace(lb, running=False, servers=(), stats=()))
            continue
        servers: list[ServerState] = []
        stats: list[ServerStats] = []
        for s in lb.servers:
            if s.server.partition(".")[0] in frozen or s.backend in held_backends:
                servers.append(s)
                continue
            fate = draw(SERVER_FATES)
            if fate == "gone":
                continue
            if fate == "weight":
                s = replace(s, weight=draw(WEIGHTS))
            elif fate in ("drain", "maint"):
                s = replace(s, admin=(fate,), weight=0 if fate == "drain" else s.weight)
            elif fate == "moved":  # pointing at a port nothing publishes
                s = replace(s, port=s.port + 1000)
            elif fate == "down":  # HAProxy's own check holds it DOWN
                stats.append(ServerStats(s.backend, s.server, "DOWN", s.weight, 0, 0))
            servers.append(s)
        stranger = next((h for h in HOSTS if h not in frozen), None)
        if stranger and "be_web" not in held_backends and draw(st.booleans()):  # an extra server nobody wants, on a dead port
            servers.append(ServerState("be_web", f"{stranger}.stranger", "10.0.0.1", 1, 100,
                                       "running", ()))
        config_servers = lb.config_servers
        sections = lb.config_sections
        stale = draw(STALENESS)
        # (the config lines of a frozen host's servers stay: the pass leaves them too)
        kept = tuple(c for c in config_servers
                     if c[1].partition(".")[0] in frozen or c[0] in held_backends)
        if stale == "servers":
            config_servers = kept + tuple(c for c in config_servers if c not in kept)[1:]
        elif stale == "sections":
            sections = tuple((k, "0" * 8) for k, _ in sections)
        elif stale == "none":
            config_servers, sections = kept, ()
        lbs.append(replace(lb, servers=tuple(servers), stats=tuple(stats),
                           config_servers=config_servers, config_sections=sections))
    return replace(world, hosts=tuple(hosts), lbs=tuple(lbs))


def _container_key(c) -> tuple[str, str, str, str]:  # type: ignore[no-untyped-def]
    return (c.label(identity.SERVICE), c.label(identity.REVISION),
            c.label(identity.CONFIG_HASH), c.label(identity.REPLICA))


def _wanted(d: DesiredState, world: ObservedState, host: str) -> set[tuple[str, str, str, str]]:
    """(service, revision, config hash, replica) of every container ``d`` wants on
    ``host``, with the image ids the host has."""
    images = dict(world.host(host).images)
    out = set()
    for svc in d.services:
        if host not in svc.hosts:
            continue
        for rel in svc.releases:
            chash = identity.config_hash(d.environment, svc.name, rel.revision, rel.spec,
                                         images[rel.spec.image])
            out |= {(svc.name, rel.revision, chash, str(r)) for r in range(svc.replicas)}
    return out


def check_outcome(after: DesiredState, world: ObservedState, held: dict[str, str],
                  frozen: frozenset[str]) -> None:
    p = plan(after, world, held=held, frozen=frozen)
    result = simulate(p, world, after)
    text = plan_text(p, "x")
    # the pass's own outcome check holds
    assert verify(after, result, skip=held, frozen=frozen) == (), (
        verify(after, result, skip=held, frozen=frozen), text)
    # containers: exactly the desired ones, running, on every host not frozen; held
    # services and frozen hosts exactly as they ran
    for h in sorted({h.name for h in world.hosts} | {h.name for h in result.hosts}):
        before = {c.name: c for c in world.host(h).containers}
        now = {c.name: c for c in result.host(h).containers}
        if h in frozen:
            assert now == before, (h, text)
            continue
        for name, c in before.items():
            if c.label(identity.SERVICE) in held:
                assert now.get(name) == c, (h, name, text)
        mine = [c for c in now.values() if c.label(identity.SERVICE) not in held]
        want = {k for k in _wanted(after, result, h) if k[0] not in held}
        have = [_container_key(c) for c in mine]
        assert sorted(have) == sorted(want), (h, sorted(set(have) ^ want), text)
        # ("starting": in its start period, gated by the executor before it gets traffic)
        assert all(c.status == "running" and c.health in ("healthy", "none", "starting")
                   for c in mine), (
            h, [(c.name, c.status, c.health) for c in mine])
        deleted = {c.label(identity.SERVICE) for c in mine} - {s.name for s in after.services}
        assert not deleted, (h, deleted, text)
    # HAProxy: every server of a desired container at its release's weight, ready (on
    # the desired LB hosts: a host that left the load balancer keeps its HAProxy as it
    # was, see the report of issue 16)
    weight = {(s.name, r.revision): r.weight for s in after.services for r in s.releases}
    lb_hosts = {h for lb in after.loadbalancers for h in lb.hosts}
    for lb in result.lbs:
        if lb.host not in lb_hosts:
            continue
        assert lb.running, (lb.host, text)
        for srv in lb.servers:
            app_host, _, cname = srv.server.partition(".")
            c = next((c for c in result.host(app_host).containers if c.name == cname), None)
            assert c is not None, (lb.host, srv, text)
            key = (c.label(identity.SERVICE), c.label(identity.REVISION))
            if key[0] in held or app_host in frozen:
                continue
            assert srv.weight == weight[key], (lb.host, srv.server, srv.weight, weight[key])
            assert srv.admin == (), (lb.host, srv.server, srv.admin)
            assert (srv.address, srv.port) == c.published, (srv, c.published)
    # and nothing is left to do
    again = plan(after, result, held=held, frozen=frozen)
    assert again.empty, (text, plan_text(again, "x"))


# 300 examples in 3 shards of 100, each its own random search, so that `pytest -n`
# spreads them over CPUs.
SHARDS, EXAMPLES = 3, 300


@pytest.mark.parametrize("shard", range(SHARDS))
@settings(max_examples=EXAMPLES // SHARDS, deadline=None,
          suppress_health_check=[HypothesisHealth.too_slow, HypothesisHealth.data_too_large])
@given(data=st.data(), before=states(), after=states())
def test_plan_reaches_the_desired_state_from_any_world(shard, data, before, after) -> None:  # type: ignore[no-untyped-def]
    frozen = frozenset(data.draw(st.lists(st.sampled_from(HOSTS), max_size=1, unique=True)))
    names = sorted({s.name for s in after.services} | {s.name for s in before.services})
    held = {n: "failed at this commit" for n in data.draw(
        st.lists(st.sampled_from(names), max_size=1, unique=True))}
    world = with_images(data.draw(perturbed(converge(before), frozen, frozenset(held))), after)
    check_outcome(after, world, held, frozen)
