"""Planner: scenario tables, determinism, and the fixpoint property (plan of the planned
world is empty)."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from support import converge, desired, service, simulate, with_images

from reconciler import identity
from reconciler.model import Frontend, ObservedContainer, ObservedState
from reconciler.plan.actions import (
    ConfigureLB,
    DrainServer,
    PullImage,
    RemoveContainer,
    SetWeight,
    StartContainer,
)
from reconciler.plan.planner import plan
from reconciler.plan.verify import verify
from reconciler.present.output import plan_json, plan_text


def kinds(p):  # type: ignore[no-untyped-def]
    return [a.kind for a in p.actions]


def four_runs(d, world):  # type: ignore[no-untyped-def]
    """Plan shows changes, apply, apply again changes nothing, plan shows nothing."""
    first = plan(d, world)
    assert not first.empty
    after = simulate(first, world, d)
    assert verify(d, after) == ()  # the outcome the plan promised
    again = plan(d, after)
    assert again.empty, plan_text(again, "test")
    assert simulate(again, after, d) == after
    return first, after


def test_first_deploy_starts_adds_and_configures() -> None:
    d = desired(service("web", replicas=2))
    p, _ = four_runs(d, with_images(ObservedState(), d))
    assert kinds(p) == ["start-container"] * 2 + ["add-server"] * 2 + ["configure-haproxy"]
    assert all("first deploy" in a.reason for a in p.actions if isinstance(a, StartContainer))
    cfg = p.actions[-1]
    assert isinstance(cfg, ConfigureLB) and cfg.reload
    assert "HAProxy is not running" in cfg.reasons


def test_missing_image_is_pulled_first_then_converges() -> None:
    d = desired(service("web", replicas=1))
    p = plan(d, ObservedState())
    assert isinstance(p.actions[0], PullImage) and p.actions[0].image == "app:v1"
    after = simulate(p, ObservedState(), d)
    assert plan(d, after).empty


def test_new_release_at_weight_10_keeps_old_and_moves_weight() -> None:
    world = converge(desired(service("web", [("v1", 100)])))
    d = desired(service("web", [("v1", 90), ("v2", 10)]))
    p, after = four_runs(d, with_images(world, d))
    starts = [a for a in p.actions if isinstance(a, StartContainer)]
    assert {a.revision for a in starts} == {"v2"}
    assert all(a.reason == "new release v2 at weight 10" for a in starts)
    weights = [a for a in p.actions if isinstance(a, SetWeight)]
    assert {(a.old_weight, a.weight) for a in weights} == {(100, 90)}
    assert not any(isinstance(a, RemoveContainer | DrainServer) for a in p.actions)
    assert len(after.host("h1").containers) == 4


def test_env_change_replaces_containers_never_updates() -> None:
    world = converge(desired(service("web", env={"LOG_LEVEL": "info"})))
    d = desired(service("web", env={"LOG_LEVEL": "debug"}))
    p, after = four_runs(d, with_images(world, d))
    starts = [a for a in p.actions if isinstance(a, StartContainer)]
    removes = [a for a in p.actions if isinstance(a, RemoveContainer)]
    assert len(starts) == 2 and len(removes) == 2
    assert all(a.reason == "env LOG_LEVEL changed (info -> debug)" for a in starts)
    assert all(a.reason == "replaced: env LOG_LEVEL changed (info -> debug)" for a in removes)
    # order: start before adding, drain before removing the server, removal last
    order = kinds(p)
    assert (
        order.index("start-container")
        < order.index("add-server")
        < order.index("drain-server")
        < order.index("remove-server")
        < order.index("remove-container")
    )
    old = {c.name for c in world.host("h1").containers}
    assert not old & {c.name for c in after.host("h1").containers}


def test_secret_looking_env_values_are_masked_in_reasons_and_output() -> None:
    world = converge(desired(service("web", env={"DB_PASSWORD": "hunter2"})))
    d = desired(service("web", env={"DB_PASSWORD": "correct-horse"}))
    p = plan(d, with_images(world, d))
    text = plan_text(p, "c") + plan_json(p, "c")
    assert "hunter2" not in text and "correct-horse" not in text
    assert "env DB_PASSWORD changed (****** -> ******)" in text
    # the spec label that `docker ps` shows carries a digest, not the value
    labels = [v for c in world.host("h1").containers for _, v in c.labels]
    assert labels and not any("hunter2" in v for v in labels)


def test_replicas_down_drains_and_removes_the_extra_replica() -> None:
    world = converge(desired(service("web", replicas=2)))
    d = desired(service("web", replicas=1))
    p, _ = four_runs(d, with_images(world, d))
    assert kinds(p) == ["drain-server", "remove-server", "configure-haproxy", "remove-container"]
    assert p.actions[-1].reason == "replicas 1: replica 1 no longer needed"


def test_replicas_up_adds_one_container() -> None:
    world = converge(desired(service("web", replicas=1)))
    d = desired(service("web", replicas=2))
    p, _ = four_runs(d, with_images(world, d))
    assert kinds(p) == ["start-container", "add-server", "configure-haproxy"]
    assert "replica 1 added" in p.actions[0].reason


def test_weight_change_only_uses_runtime_api_and_no_reload() -> None:
    world = converge(desired(service("web", [("v1", 90), ("v2", 10)])))
    d = desired(service("web", [("v1", 50), ("v2", 50)]))
    p, _ = four_runs(d, with_images(world, d))
    assert kinds(p) == ["set-weight"] * 4 + ["configure-haproxy"]
    cfg = p.actions[-1]
    assert isinstance(cfg, ConfigureLB) and not cfg.reload


def test_release_removal() -> None:
    world = converge(desired(service("web", [("v1", 0), ("v2", 100)])))
    d = desired(service("web", [("v2", 100)]))
    p, _ = four_runs(d, with_images(world, d))
    removes = [a for a in p.actions if isinstance(a, RemoveContainer)]
    assert {a.reason for a in removes} == {"release v1 removed"}
    assert sum(isinstance(a, DrainServer) for a in p.actions) == 2


def test_service_removal_removes_backend_and_containers() -> None:
    world = converge(desired(service("web"), service("api", replicas=1)))
    d = desired(service("web"))
    p, _ = four_runs(d, with_images(world, d))
    assert {a.reason for a in p.actions if isinstance(a, RemoveContainer)} == {
        "service api removed"
    }
    cfgs = [a for a in p.actions if isinstance(a, ConfigureLB)]
    assert any("backend be_api removed" in r for c in cfgs for r in c.reasons)


def test_tls_frontend_added_reloads_with_reason() -> None:
    base = desired(service("web"))
    world = converge(base)
    https = Frontend(
        name="https",
        bind_address="127.0.0.1",
        bind_port=8443,
        routes=(),
        default_service="web",
        tls_certificate="/etc/ssl/site.pem",
    )
    d = replace(
        base,
        loadbalancers=(
            replace(base.loadbalancers[0], frontends=(*base.loadbalancers[0].frontends, https)),
        ),
    )
    p, _ = four_runs(d, world)
    assert kinds(p) == ["configure-haproxy"]
    assert p.actions[0].reasons == ("frontend fe_https added",)  # type: ignore[attr-defined]


def test_exited_container_is_replaced_under_the_same_name() -> None:
    d = desired(service("web", replicas=1))
    world = converge(d)
    (c,) = world.host("h1").containers
    dead = replace(world.host("h1"), containers=(replace(c, status="exited"),))
    world = replace(world, hosts=(dead,))
    p, after = four_runs(d, world)
    assert kinds(p) == ["remove-container", "start-container", "repoint-server",
                        "configure-haproxy"]
    assert p.actions[0].reason.startswith(f"container {c.name} is exited")
    assert not p.actions[-1].reload  # type: ignore[attr-defined]
    assert [x.name for x in after.host("h1").containers] == [c.name]


def test_moved_tag_is_a_difference() -> None:
    d = desired(service("web", replicas=1))
    world = converge(d)
    h = world.host("h1")
    moved = replace(h, images=(("app:v1", "sha256:" + "9" * 64),))
    p = plan(d, replace(world, hosts=(moved,)))
    starts = [a for a in p.actions if isinstance(a, StartContainer)]
    assert len(starts) == 1 and "now resolves to 999999999999" in starts[0].reason


def test_other_environments_and_unknown_labels_are_ignored() -> None:
    d = desired(service("web", replicas=1))
    world = converge(d)
    stranger = ObservedContainer(
        id="x",
        name="staging-web-v1-0",
        status="running",
        health="healthy",
        image_id="sha256:1",
        labels=(
            (identity.ENVIRONMENT, "staging"),
            (identity.MANAGED, "true"),
            (identity.SERVICE, "web"),
        ),
    )
    h = world.host("h1")
    world = replace(world, hosts=(replace(h, containers=(*h.containers, stranger)),))
    assert plan(d, world).empty


def test_weight_drift_through_runtime_api_is_repaired() -> None:
    d = desired(service("web", replicas=1))
    world = converge(d)
    lb = world.lbs[0]
    drifted = replace(lb, servers=(replace(lb.servers[0], weight=3, admin=("maint",)),))
    p = plan(d, replace(world, lbs=(drifted,)))
    assert kinds(p) == ["set-weight", "configure-haproxy"]
    assert "state maint" in p.actions[0].reason


def test_server_missing_from_haproxy_is_added_back() -> None:
    d = desired(service("web", replicas=1))
    world = converge(d)
    world = replace(world, lbs=(replace(world.lbs[0], servers=()),))
    p = plan(d, world)
    assert kinds(p) == ["add-server", "configure-haproxy"]
    assert p.actions[0].reason == "server missing"


def test_container_removed_by_hand_is_recreated_under_its_name() -> None:
    d = desired(service("web", replicas=1))
    world = converge(d)
    world = replace(world, hosts=(replace(world.host("h1"), containers=()),))
    p, _ = four_runs(d, world)
    assert kinds(p) == ["start-container", "repoint-server", "configure-haproxy"]


def test_server_without_container_is_drained_and_removed() -> None:
    world = converge(desired(service("web", replicas=2)))
    h = world.host("h1")
    world = replace(world, hosts=(replace(h, containers=h.containers[:1]),))
    d = desired(service("web", replicas=1))
    p, _ = four_runs(d, world)
    assert kinds(p) == ["drain-server", "remove-server", "configure-haproxy"]
    assert p.actions[0].reason == "no such container"


# --------------------------------------------------------------------------- properties

names = st.sampled_from(["web", "api", "jobs", "auth"])
hosts = st.sampled_from([("h1",), ("h2",), ("h1", "h2")])


@st.composite
def services(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, 3))
    revs = draw(
        st.lists(st.sampled_from(["v1", "v2", "v3", "v4"]), min_size=n, max_size=n, unique=True)
    )
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    env = {"LEVEL": draw(st.sampled_from(["info", "debug"]))}
    return (revs, weights, draw(st.integers(0, 3)), draw(hosts), env)


@st.composite
def states(draw):  # type: ignore[no-untyped-def]
    chosen = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    svcs = []
    for name in chosen:
        revs, weights, replicas, hs, env = draw(services())
        svcs.append(service(name, list(zip(revs, weights, strict=True)), replicas, hs, env))
    return desired(*svcs, hosts=("h1", "h2"), lb_hosts=("h1",))


@st.composite
def perturbed(draw, world):  # type: ignore[no-untyped-def]
    """Crash and drift: some containers exited, some gone, some weights changed."""
    out = []
    for h in world.hosts:
        cs = []
        for c in h.containers:
            fate = draw(st.sampled_from(["keep", "keep", "keep", "exited", "gone"]))
            if fate == "exited":
                cs.append(replace(c, status="exited"))
            elif fate == "keep":
                cs.append(c)
        out.append(replace(h, containers=tuple(cs)))
    lbs = []
    for lb in world.lbs:
        lbs.append(
            replace(
                lb,
                servers=tuple(
                    replace(s, weight=draw(st.integers(0, 100))) if draw(st.booleans()) else s
                    for s in lb.servers
                ),
            )
        )
    return replace(world, hosts=tuple(out), lbs=tuple(lbs))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), before=states(), after=states())
def test_plan_reaches_a_fixpoint_and_is_deterministic(data, before, after) -> None:  # type: ignore[no-untyped-def]
    world = data.draw(perturbed(converge(before)))
    world = with_images(world, after)
    p = plan(after, world)
    # deterministic: same inputs, same plan, byte for byte, whatever the input order
    shuffled = replace(
        world,
        hosts=tuple(
            replace(h, containers=tuple(random.sample(h.containers, len(h.containers))))
            for h in reversed(world.hosts)
        ),
    )
    again = plan(after, shuffled)
    assert plan_json(p, "x") == plan_json(again, "x")
    assert plan_text(p, "x") == plan_text(again, "x")
    # the plan computed against the state the plan produces is empty
    result = simulate(p, world, after)
    assert plan(after, result).empty, plan_text(plan(after, result), "x")
    # and the world it leaves is the one promised (every server on its container's port)
    assert verify(after, result) == (), verify(after, result)
    # and what runs is exactly what is desired
    for svc in after.services:
        for h in svc.hosts:
            running = [
                c for c in result.host(h).containers if c.label(identity.SERVICE) == svc.name
            ]
            assert len(running) == svc.replicas * len(svc.releases)


def test_stale_config_file_is_rewritten_without_reload() -> None:
    d = desired(service("web", replicas=2))
    world = converge(d)
    lb = world.lbs[0]
    stale = replace(world, lbs=(replace(lb, config_servers=lb.config_servers[:1]),))
    p = plan(d, stale)
    assert kinds(p) == ["configure-haproxy"]
    assert not p.actions[0].reload  # type: ignore[attr-defined]
    assert plan(d, simulate(p, stale, d)).empty
