"""Planner: which steps reload HAProxy. Only structure (a frontend, route, backend or TLS
binding appearing, disappearing or changing) or a stopped HAProxy reloads; every server
change (new release, replica, replaced container, new app host, weights, removals) goes
through the runtime API, the config file written without a reload. Each scenario runs
the four-run pattern, and the plan's text and JSON say which steps reload."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from support import converge, desired, service, simulate, with_images

from reconciler.model import DesiredState, Frontend, ObservedState, Route
from reconciler.plan.actions import AddServer, ConfigureLB
from reconciler.plan.planner import Plan, plan
from reconciler.plan.verify import verify
from reconciler.present.output import plan_json, plan_text

BASE = desired(service("web", [("v1", 100)]), service("api", replicas=1))


def _lb(d: DesiredState, **changes: object) -> DesiredState:
    return replace(d, loadbalancers=(replace(d.loadbalancers[0], **changes),))


def _frontends(d: DesiredState, *extra: Frontend, routes: tuple[Route, ...] = ()) -> DesiredState:
    (fe,) = d.loadbalancers[0].frontends
    return _lb(d, frontends=(replace(fe, routes=fe.routes + routes), *extra))


def _web(d: DesiredState, **changes: object) -> DesiredState:
    return replace(
        d, services=tuple(replace(s, **changes) if s.name == "web" else s for s in d.services)
    )


def _exited(world: ObservedState) -> ObservedState:
    h = world.host("h1")
    c = next(c for c in h.containers if "-web-" in c.name)
    gone = tuple(replace(x, status="exited") if x is c else x for x in h.containers)
    return replace(world, hosts=(replace(h, containers=gone),))


HTTPS = Frontend("https", "127.0.0.1", 8443, (), "web", tls_certificate="/etc/ssl/site.pem")

# name -> (desired after, how the converged BASE world is changed, reloads expected)
CASES: dict[str, tuple[DesiredState, Callable[[ObservedState], ObservedState], int]] = {
    "new release at weight 10": (
        desired(service("web", [("v1", 90), ("v2", 10)]), service("api", replicas=1)),
        lambda w: w,
        0,
    ),
    "release switch": (
        desired(service("web", [("v2", 100)]), service("api", replicas=1)),
        lambda w: w,
        0,
    ),
    "env change": (
        desired(service("web", env={"LOG_LEVEL": "debug"}), service("api", replicas=1)),
        lambda w: w,
        0,
    ),
    "replicas up": (desired(service("web"), service("api", replicas=3)), lambda w: w, 0),
    "replicas down": (desired(service("web"), service("api", replicas=0)), lambda w: w, 0),
    "weights": (
        desired(service("web", [("v1", 100), ("v2", 0)]), service("api", replicas=1)),
        lambda w: w,
        0,
    ),
    "replaced container": (BASE, _exited, 0),
    "new app host": (
        desired(service("web", hosts=("h1", "h2")), service("api", replicas=1), hosts=("h1", "h2")),
        lambda w: w,
        0,
    ),
    "backend setting changed": (_web(BASE, balance="leastconn"), lambda w: w, 1),
    "service added (backend, route)": (
        desired(service("web"), service("api", replicas=1), service("new", replicas=1)),
        lambda w: w,
        1,
    ),
    "service removed (backend, route)": (desired(service("web")), lambda w: w, 1),
    "route added": (
        _frontends(BASE, routes=(Route(service="api", path_prefix="/v2"),)),
        lambda w: w,
        1,
    ),
    "TLS frontend added": (_frontends(BASE, HTTPS), lambda w: w, 1),
}


def _four_runs(d: DesiredState, world: ObservedState) -> Plan:
    first = plan(d, world)
    after = simulate(first, world, d)
    assert verify(d, after) == ()
    assert plan(d, after).empty, plan_text(plan(d, after), "t")
    return first


@pytest.mark.parametrize("name", list(CASES))
def test_only_structure_reloads(name: str) -> None:
    after, change, reloads = CASES[name]
    world = change(with_images(converge(BASE), after))
    p = _four_runs(after, world)
    text, doc = plan_text(p, "c"), json.loads(plan_json(p, "c"))
    steps = [i + 1 for i, a in enumerate(p.actions) if a.reloads]
    assert len(steps) == reloads, text
    assert doc["reloads"] == steps == [a["step"] for a in doc["actions"] if a["reloads"]]
    configs = [a for a in p.actions if isinstance(a, ConfigureLB)]
    assert configs, text  # the config file is written in every case
    if reloads:
        assert f"HAProxy reloads: step {steps[0]} on h1." in text
    else:
        assert "HAProxy reloads: none (runtime API and config files only)." in text
        assert all("no reload" in a.describe() for a in configs)
    # a server is added to a running backend at runtime; only a new backend's come with
    # the reload
    adds = [a for a in p.actions if isinstance(a, AddServer)]
    assert all(a.runtime == (a.backend != "be_new") for a in adds), text


def test_servers_of_a_stopped_haproxy_come_with_its_start() -> None:
    d = desired(service("web", replicas=2))
    p = plan(d, with_images(ObservedState(), d))
    adds = [a for a in p.actions if isinstance(a, AddServer)]
    assert len(adds) == 2 and not any(a.runtime for a in adds)
    assert [a.reasons for a in p.actions if a.reloads] == [  # type: ignore[attr-defined]
        ("HAProxy is not running", "2 server(s) added with it")
    ]
