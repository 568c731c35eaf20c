"""Pool configuration in etcd, the pure parts: the published values (JSON, versioned,
validated on read), what the leader publishes from desired and observed state, and
the LB agent's plan from them (the planner's LB part: a reload only for structure)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from support import converge, desired, service

from reconciler.cluster.lbconfig import (
    LBConfigError,
    LBReport,
    Pool,
    PoolServer,
    Publication,
    decode_pool,
    decode_report,
    decode_structure,
    desired_for,
    encode_pool,
    encode_report,
    encode_structure,
    structure_of,
)
from reconciler.lb.haproxy.sections import section_digests
from reconciler.model import (
    AcmeSpec,
    DesiredState,
    Frontend,
    HealthCheck,
    ObservedLB,
    Route,
    ServerStats,
    SyslogTarget,
    Timeouts,
)
from reconciler.plan.actions import AddServer, ConfigureLB, DrainServer, RemoveServer, SetWeight
from reconciler.plan.pools import agent_plan, publication

FRONTENDS = (
    Frontend("http", "127.0.0.1", 8080, (Route("api", host="api.example.org"),
                                         Route("api", path_prefix="/api")),
             default_service="web", redirect_https=True),
    Frontend("https", "*", 8443, (), default_service="web",
             tls_acme=AcmeSpec("https://acme.test/dir", ("a.example.org",), "ops@x.org")),
)
BASE = desired(service("web", [("v1", 100)]), service("api", replicas=1), frontends=FRONTENDS)


def _full(d: DesiredState) -> DesiredState:
    lb = replace(d.loadbalancers[0], syslog=SyslogTarget("127.0.0.1:514"))
    web = replace(d.services[0], balance="leastconn", timeouts=Timeouts(1000, 2000, 3000),
                  drain_timeout_s=7)
    return replace(d, loadbalancers=(lb,), services=(web, *d.services[1:]))


def _publication(d: DesiredState) -> Publication:
    return publication(d, converge(d))


def test_structure_and_pools_round_trip_and_render_the_same_sections() -> None:
    d = _full(BASE)
    st = structure_of(d, d.loadbalancers[0])
    raw = encode_structure(st)
    assert decode_structure("k", raw) == st
    assert json.loads(raw)["format"] == "reconciler/lb-structure"
    assert raw == encode_structure(decode_structure("k", raw))  # canonical bytes
    assert section_digests(desired_for(st), st.loadbalancer) == section_digests(d, d.loadbalancers[0])
    for pool in _publication(d).pools:
        assert decode_pool("k", encode_pool(pool)) == pool


def test_publication_has_the_running_servers_with_weights_and_revisions() -> None:
    pub = _publication(BASE)
    pools = {p.backend: p for p in pub.pools}
    assert sorted(pools) == ["be_api", "be_web"]
    web = pools["be_web"].servers
    assert [(s.app_host, s.weight, s.revision, s.state) for s in web] == [
        ("h1", 100, "v1", "ready"), ("h1", 100, "v1", "ready")]
    assert all(s.port > 0 and s.name == f"h1.{s.container}" for s in web)


SERVER = {"name": "h1.c1", "app_host": "h1", "container": "c1", "address": "10.0.0.1",
          "port": 40000, "weight": 10, "revision": "v1", "state": "ready"}


def _pool_raw(**server: object) -> bytes:
    body = {"format": "reconciler/pool", "version": 1, "backend": "be_web", "service": "web",
            "servers": [{**SERVER, **server}]}
    return json.dumps(body).encode()


@pytest.mark.parametrize(("raw", "message"), [
    (b"{nope", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"format": "other", "version": 1}).encode(), "field format is not"),
    (json.dumps({"format": "reconciler/pool", "version": 2}).encode(), "field version is 2"),
    (_pool_raw(weight=300), "field servers[0].weight 300 is not 0-256"),
    (_pool_raw(port="80"), "field servers[0].port '80' is not a int"),
    (_pool_raw(weight=True), "field servers[0].weight True is not a int"),
    (_pool_raw(address="10.0.0.1 weight 1"), "servers[0].address '10.0.0.1 weight 1' is not an IP"),
    (_pool_raw(container="c 1", name="h1.c 1"), "servers[0].container 'c 1' is not a name"),
    (_pool_raw(name="h2.c1"), "servers[0].name 'h2.c1' is not <app_host>.<container>"),
    (_pool_raw(state="gone"), "servers[0].state 'gone' is not one of ready, drain"),
    (_pool_raw(extra=1), "servers[0].extra 1 is not a known field"),
    (_pool_raw(revision="v1\nserver x"), "servers[0].revision 'v1\\nserver x' holds a control"),
])
def test_a_bad_pool_value_is_refused_naming_key_field_and_value(raw: bytes, message: str) -> None:
    with pytest.raises(LBConfigError, match="etcd key '/p/pool/be_web'") as exc:
        decode_pool("/p/pool/be_web", raw)
    assert message in str(exc.value)


def test_a_structure_missing_a_field_or_naming_other_hosts_is_refused() -> None:
    st = structure_of(BASE, BASE.loadbalancers[0])
    body = json.loads(encode_structure(st))
    del body["loadbalancer"]["frontends"][0]["bind_port"]
    with pytest.raises(LBConfigError, match=r"loadbalancer.frontends\[0\].bind_port None is missing"):
        decode_structure("k", json.dumps(body).encode())
    body = json.loads(encode_structure(st))
    body["loadbalancer"]["frontends"][0]["routes"] = [{"service": "web", "host": "a\n  bind :1"}]
    with pytest.raises(LBConfigError, match=r"routes\[0\].host .* holds a control character"):
        decode_structure("k", json.dumps(body).encode())
    with pytest.raises(LBConfigError, match="are not the load balancer's hosts"):
        decode_structure("k", encode_structure(replace(st, hosts=())))


# ------------------------------------------------------------------ the agent's plan


def _agent(d: DesiredState, obs: ObservedLB, pools: tuple[Pool, ...] | None = None) -> list[str]:
    st = structure_of(d, d.loadbalancers[0])
    plan = agent_plan(st, _publication(d).pools if pools is None else pools, obs)
    out = []
    for a in plan.actions:
        reload = f" reload={a.reload}" if isinstance(a, ConfigureLB) else ""
        out.append(f"{a.kind}{reload}")
    return out


def test_the_agent_plans_nothing_when_haproxy_serves_the_pools() -> None:
    assert _agent(BASE, converge(BASE).lb("h1")) == []


def test_the_agent_starts_haproxy_with_every_server() -> None:
    steps = _agent(BASE, ObservedLB(host="h1", running=False))
    assert steps.count("add-server") == 3 and steps[-1].endswith("reload=True"), steps


def test_weights_and_a_release_switch_go_through_the_runtime_api() -> None:
    world = converge(BASE)
    pools = _publication(BASE).pools
    reweighed = tuple(Pool(p.backend, p.service, tuple(replace(s, weight=7) for s in p.servers))
                      for p in pools)
    plan = agent_plan(structure_of(BASE, BASE.loadbalancers[0]), reweighed, world.lb("h1"))
    assert {type(a) for a in plan.actions} == {SetWeight, ConfigureLB}
    assert not any(isinstance(a, ConfigureLB) and a.reload for a in plan.actions)

    v2 = replace(BASE, services=(service("web", [("v2", 100)]), BASE.services[1]))
    switched = publication(v2, converge(v2, world))  # v1's containers are gone there
    plan = agent_plan(structure_of(v2, v2.loadbalancers[0]), switched.pools, world.lb("h1"))
    kinds = [type(a) for a in plan.actions]
    assert kinds.count(AddServer) == 2 and kinds.count(DrainServer) == 2
    assert kinds.count(RemoveServer) == 2
    assert all(a.runtime for a in plan.actions if isinstance(a, AddServer))
    assert not any(isinstance(a, ConfigureLB) and a.reload for a in plan.actions)


def test_a_draining_server_goes_to_weight_0_and_a_structure_change_reloads() -> None:
    world = converge(BASE)
    pools = tuple(Pool(p.backend, p.service, tuple(replace(s, state="drain") for s in p.servers))
                  if p.service == "web" else p for p in _publication(BASE).pools)
    plan = agent_plan(structure_of(BASE, BASE.loadbalancers[0]), pools, world.lb("h1"))
    assert sorted(a.weight for a in plan.actions if isinstance(a, SetWeight)) == [0, 0]
    slower = replace(BASE, services=(replace(BASE.services[0], timeouts=Timeouts(9000)),
                                     BASE.services[1]))
    assert _agent(slower, world.lb("h1"), _publication(BASE).pools) == [
        "configure-haproxy reload=True"]


def test_health_of_a_service_without_releases_is_kept_apart() -> None:
    d = replace(BASE, services=(*BASE.services, replace(service("old"), releases=())))
    st = structure_of(d, d.loadbalancers[0])
    assert [b.health for b in st.backends][-1] is None
    assert st.backends[0].health == HealthCheck(kind="http", path="/healthz")
    assert section_digests(desired_for(st), st.loadbalancer) == section_digests(d, d.loadbalancers[0])


def test_an_agent_report_round_trips() -> None:
    report = LBReport("lb1", 42, "c0ffee", 0, 1.5)
    assert decode_report("k", encode_report(report)) == report
    counted = replace(report, worker_pid=7, stats=(
        ServerStats("be_web", "h1.c", "UP", 100, 0, 12, hrsp_2xx=11, hrsp_5xx=1,
                    check_status="L7OK"),))
    assert decode_report("k", encode_report(counted)) == counted
    with pytest.raises(LBConfigError, match=r"stats\[0\]\.hrsp_5xx"):
        decode_report("k", encode_report(counted).replace(b'"hrsp_5xx":1', b'"hrsp_5xx":"x"'))
    with pytest.raises(LBConfigError, match="field format is not 'reconciler/lb-report'"):
        decode_report("k", encode_pool(Pool("be_web", "web", ())))


def test_pool_server_defaults() -> None:
    s = PoolServer("h.c", "h", "c", "10.0.0.1", 1, 1, "v1")
    assert s.state == "ready"


def test_frozen_hosts_keep_their_published_servers_whatever_is_observed() -> None:
    """A host of a later rollout batch, or whose agent is silent (no report: observed
    runs nothing there), keeps its servers exactly as published; the others follow
    what runs. Without ``frozen`` a silent host's servers would leave the pool."""
    two = ("h1", "h2")
    v1 = desired(service("web", [("v1", 100)], replicas=1, hosts=two), hosts=two)
    v1_world = converge(v1)
    before = {p.backend: p for p in publication(v1, v1_world).pools}
    assert {s.app_host for s in before["be_web"].servers} == {"h1", "h2"}
    v2 = desired(service("web", [("v2", 100)], replicas=1, hosts=two), hosts=two)
    switched = converge(v2, v1_world)
    silent_h2 = replace(switched, hosts=tuple(h for h in switched.hosts if h.name != "h2"))
    assert {s.app_host for s in publication(v2, silent_h2).pools[0].servers} == {"h1"}
    pools = {p.backend: p for p in publication(v2, silent_h2, {"h2"}, before).pools}
    web = pools["be_web"].servers
    assert [(s.app_host, s.revision) for s in web] == [("h1", "v2"), ("h2", "v1")]
    assert [s for s in web if s.app_host == "h2"] == [
        s for s in before["be_web"].servers if s.app_host == "h2"]
