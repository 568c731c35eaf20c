"""The executor's failure-isolation rules (reconciler/apply/steps.py's header and the
table "When something fails" of docs/operations.md), on in-memory fakes of the
container engines and the load balancers (tests/fakes.py). Each test runs a real plan of
the planner and asserts the outcome: the result, what runs, what each LB serves and has
installed. The integration tests check the same rules against Docker and HAProxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEngines, FakeHAProxyHost, FakeLB
from support import converge, desired, service, with_images

from reconciler.apply.results import ApplyResult
from reconciler.apply.steps import Executor
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.lb.port import LBError
from reconciler.model import DesiredState, ObservedState
from reconciler.plan.actions import (
    AddServer,
    ConfigureLB,
    DrainServer,
    RemoveContainer,
    StartContainer,
)
from reconciler.plan.planner import Plan, plan

HOSTS = ("h1", "h2")


def fleet(web: str = "v1", lb_hosts: tuple[str, ...] = ("lb1",)) -> DesiredState:
    """web (2 replicas per host) at revision ``web`` and api (1 per host) on h1 and h2."""
    return desired(
        service("web", releases=[(web, 100)], hosts=HOSTS),
        service("api", hosts=HOSTS, replicas=1),
        hosts=HOSTS,
        lb_hosts=lb_hosts,
    )


def restructured(d: DesiredState) -> DesiredState:
    """``d`` with web's backend settings changed (balance leastconn): a reload."""
    services = tuple(replace(s, balance="leastconn") if s.name == "web" else s for s in d.services)
    return replace(d, services=services)


@dataclass
class World:
    desired: DesiredState
    observed: ObservedState
    plan: Plan
    engines: FakeEngines
    lbs: dict[str, FakeLB]

    @classmethod
    def of(cls, after: DesiredState, before: DesiredState | None = None) -> World:
        """The world ``before`` converged (nothing: empty), with ``after``'s images; its
        plan to ``after``."""
        observed = with_images(converge(before) if before else ObservedState(), after)
        lbdef = after.loadbalancers[0]
        lbs = {h: FakeLB.from_observed(observed.lb(h), lbdef) for h in lbdef.hosts}
        return cls(after, observed, plan(after, observed), FakeEngines.from_observed(observed), lbs)

    def executor(self, **kw: Any) -> Executor:
        return Executor(self.desired, self.observed, self.engines, self.lbs, health_min_s=0.1, **kw)

    def run(self, **kw: Any) -> ApplyResult:
        return self.executor(**kw).run(self.plan)

    def servers(
        self, kind: type[AddServer | DrainServer], service: str, host: str | None = None
    ) -> list[str]:
        """Server names of the plan's ``kind`` steps of ``service`` (on app ``host``)."""
        return [
            a.server
            for a in self.plan.actions
            if isinstance(a, kind)
            and a.service == service
            and (host is None or getattr(a, "app_host", host) == host)
        ]

    def backends_served(self, lb: str) -> set[str]:
        return {backend for backend, *_ in self.lbs[lb].serving()}


def later_steps(result: ApplyResult, service: str) -> list[tuple[str, str]]:
    """(status, detail) of ``service``'s steps after its starts."""
    return [
        (st.status, st.detail)
        for st in result.steps
        if st.action.service == service and not isinstance(st.action, StartContainer)
    ]


def fails_on(host: str, service: str, replica: int) -> Callable[[str, str], bool]:
    return lambda h, name: h == host and f"-{service}-" in name and name.endswith(f"-{replica}")


# --------------------------------------------------------------------------- services


def test_a_failed_start_undoes_the_service_on_every_host_and_other_services_go_on() -> None:
    w = World.of(fleet())
    failing = fails_on("h2", "web", 1)
    w.engines.fail_start = lambda h, n: "port is already allocated" if failing(h, n) else None

    result = w.run()

    assert set(result.failures) == {"web"}
    assert "port is already allocated" in result.failures["web"]
    # every web container this pass started is gone again, on h1 as on h2
    started_web = {k for k in w.engines.started if "-web-" in k[1]}
    assert ("h2", next(n for h, n in started_web if h == "h2")) in started_web  # replica 0
    assert started_web and started_web <= set(w.engines.removed)
    assert w.engines.names("web") == set()
    # web's later steps are skipped and say why; api's all ran
    later = later_steps(result, "web")
    assert later and all(s == "skipped" for s, _ in later)
    assert all(d.startswith("web failed in this pass (container ") for _, d in later)
    assert all(st.status == "ok" for st in result.steps if st.action.service == "api")
    assert len(w.engines.names("api")) == 2
    assert w.backends_served("lb1") == {"be_api"}
    assert not result.aborted


def test_a_container_started_after_its_service_failed_elsewhere_is_removed_again() -> None:
    w = World.of(fleet())
    ex = w.executor()
    w.engines.fail_start = lambda h, n: "no such image" if fails_on("h2", "web", 0)(h, n) else None

    def h1_waits_for_the_failure(host: str, name: str) -> None:
        deadline = time.monotonic() + 2
        while host == "h1" and "-web-" in name and "web" not in ex.result.failures:
            assert time.monotonic() < deadline, "h2's start never failed"
            time.sleep(0.001)

    w.engines.before_start = h1_waits_for_the_failure
    result = ex.run(w.plan)

    h1_web = [st for st in result.steps if st.action.host == "h1" and st.action.service == "web"]
    assert next(st.detail for st in h1_web if isinstance(st.action, StartContainer)) == (
        "removed again: the service failed on another host"
    )
    assert w.engines.names("web") == set()
    assert len(w.engines.names("api")) == 2


def test_an_unhealthy_container_fails_its_service_as_a_whole() -> None:
    w = World.of(fleet())
    w.engines.unhealthy = fails_on("h2", "web", 0)

    result = w.run()

    assert set(result.failures) == {"web"}
    assert result.failures["web"].startswith("host h2: container ")
    assert "is not healthy: GET /healthz: HTTP 503" in result.failures["web"]
    # its healthy containers (three of four) go too: the service fails as a whole
    assert len({k for k in w.engines.started if "-web-" in k[1]}) == 4
    assert w.engines.names("web") == set()
    assert all(s == "skipped" for s, _ in later_steps(result, "web"))
    assert len(w.engines.names("api")) == 2
    assert w.backends_served("lb1") == {"be_api"}


def test_a_server_not_up_after_the_reload_is_drained_and_its_service_fails() -> None:
    w = World.of(fleet())
    stuck = w.servers(AddServer, "web", "h1")[0]
    w.lbs["lb1"].never_up = {stuck}

    result = w.run()

    assert result.failures == {"web": f"server be_web/{stuck} did not come UP in HAProxy"}
    lb = w.lbs["lb1"]
    assert (lb.servers[("be_web", stuck)].weight, lb.servers[("be_web", stuck)].state) == (
        0,
        "drain",
    )
    # its container is left running; the others serve
    assert len(w.engines.names("web")) == 4
    assert ("be_web", stuck) not in {(b, s) for b, s, *_ in lb.serving()}
    assert w.backends_served("lb1") == {"be_api", "be_web"}
    configure = next(st for st in result.steps if isinstance(st.action, ConfigureLB))
    assert (configure.status, configure.detail) == (
        "ok",
        f"started HAProxy; not UP: be_web/{stuck}",
    )
    assert not result.aborted


# --------------------------------------------------------------------------- load balancers


def test_a_rejected_config_installs_nothing_on_any_lb_host_and_stops_the_pass() -> None:
    w = World.of(fleet("v2", lb_hosts=("lb1", "lb2")), before=fleet("v1", lb_hosts=("lb1", "lb2")))
    before = {h: (lb.config, lb.serving()) for h, lb in w.lbs.items()}
    w.lbs["lb2"].reject = "[ALERT] config : parsing error"

    result = w.run()

    assert result.aborted and not result.ok
    last = result.steps[-1]
    assert isinstance(last.action, ConfigureLB) and last.action.host == "lb2"
    assert last.status == "failed"
    assert last.detail.endswith("parsing error (no LB host was switched)")
    # neither LB host took a config or reloaded; no checked copy is left behind; both
    # serve the new servers added at runtime beside the old ones (none drained)
    assert {h: lb.config for h, lb in w.lbs.items()} == {h: c for h, (c, _) in before.items()}
    assert all(before[h][1] < lb.serving() for h, lb in w.lbs.items())
    assert [lb.reloads for lb in w.lbs.values()] == [0, 0]
    assert [lb.checked for lb in w.lbs.values()] == [{}, {}]
    # the later steps did not run: the old release serves; the new containers stay
    assert not any(isinstance(st.action, DrainServer) for st in result.steps)
    assert len(w.engines.names("web")) == 8
    assert "web" not in result.failures


def test_a_rejected_config_stops_the_pass_before_any_later_step() -> None:
    w = World.of(fleet("v2"), before=fleet("v1"))
    lb = w.lbs["lb1"]
    config, serving = lb.config, lb.serving()
    lb.reject = "[ALERT] config : parsing error"

    result = w.run()

    assert result.aborted
    assert set(result.failures) == {"haproxy"}
    assert "haproxy -c rejected the new config; nothing installed" in result.failures["haproxy"]
    assert isinstance(result.steps[-1].action, ConfigureLB)
    # the new servers were added at runtime (UP first); no file installed, no reload
    added = {(b, s) for b, s, *_ in lb.serving()} - {(b, s) for b, s, *_ in serving}
    assert added == {("be_web", s) for s in w.servers(AddServer, "web")}
    assert serving <= lb.serving() and (lb.config, lb.reloads) == (config, 0)
    old = {(h, n) for h, n in w.engines.names("web") if "-v1-" in n}
    assert len(old) == 4  # the old release was not drained nor removed


def test_a_failed_reload_stops_the_pass_on_the_last_good_config() -> None:
    w = World.of(restructured(fleet("v2")), before=fleet("v1"))
    lb = w.lbs["lb1"]
    config, serving = lb.config, lb.serving()
    lb.reload_fails = True

    result = w.run()

    assert result.aborted and result.reloads == 0
    assert result.failures["haproxy"].endswith("the last good config was restored")
    # the old servers serve as before, beside the new ones added at runtime before it
    assert lb.config == config and serving <= lb.serving()
    assert len([n for _, n in w.engines.names("web") if "-v1-" in n]) == 4
    assert not any(isinstance(st.action, DrainServer) for st in result.steps)


def test_a_server_added_at_runtime_not_up_fails_its_service_and_withdraws_its_servers() -> None:
    lbs = ("lb1", "lb2")
    w = World.of(fleet("v2", lb_hosts=lbs), before=fleet("v1", lb_hosts=lbs))
    before = {h: (lb.config, lb.serving()) for h, lb in w.lbs.items()}
    stuck = w.servers(AddServer, "web", "h2")[-1]
    w.lbs["lb2"].never_up = {stuck}

    result = w.run()

    assert set(result.failures) == {"web"}
    assert result.failures["web"].startswith(f"server be_web/{stuck} did not come UP in HAProxy")
    assert result.failures["web"].endswith("deleted again (it got no request)")
    # every web server this run added, on both LB hosts, is gone again; the old serve on,
    # the files and HAProxy unchanged, no reload; the new containers are removed
    assert {h: (lb.config, lb.serving()) for h, lb in w.lbs.items()} == before
    assert [lb.reloads for lb in w.lbs.values()] == [0, 0]
    assert all("-v1-" in n for _, n in w.engines.names("web"))
    assert not result.aborted


def test_a_release_switch_reloads_nothing_a_backend_change_reloads_each_lb_host() -> None:
    lbs = ("lb1", "lb2")
    w = World.of(fleet("v2", lb_hosts=lbs), before=fleet("v1", lb_hosts=lbs))
    result = w.run()
    assert result.ok and result.reloads == 0 == sum(lb.reloads for lb in w.lbs.values())
    assert sum(lb.runtime_adds for lb in w.lbs.values()) == 8  # 4 web servers per LB host
    w = World.of(restructured(fleet("v2", lb_hosts=lbs)), before=fleet("v1", lb_hosts=lbs))
    result = w.run()
    assert result.ok and result.reloads == 2 == sum(lb.reloads for lb in w.lbs.values())


def test_haproxy_restores_the_last_good_config_when_a_reload_fails() -> None:
    """The port's contract, kept by HAProxy (control.py) on a host of the fakes."""
    paths = HAProxyPaths.embedded(Path("/lbstate"), "prod")
    host = FakeHAProxyHost(paths)
    host.running = True
    lb = HAProxy(paths, transport=host)
    assert lb.install("good\n")
    lb.reload()
    with pytest.raises(LBError, match="rejected the new config; nothing installed"):
        lb.install("invalid\n")
    assert [p for p in host.files if ".tmp" in p] == []
    assert lb.install("BIND-TAKEN\n")

    with pytest.raises(LBError, match="the last good config was restored"):
        lb.reload()

    assert host.files[str(paths.config)] == host.loaded == "good\n"
    assert host.failed == 0


# --------------------------------------------------------------------------- stop, skip, drain


def test_should_stop_ends_the_run_between_steps_with_a_safe_prefix() -> None:
    total = len(World.of(fleet("v2"), before=fleet("v1")).plan.actions)
    stopped_midway = 0
    for k in range(total + 1):
        w = World.of(fleet("v2"), before=fleet("v1"))
        seen: list[object] = []
        result = w.run(on_step=seen.append, should_stop=lambda k=k, seen=seen: len(seen) >= k)

        assert len(result.steps) >= k
        assert result.stopped == (len(result.steps) < total), k
        assert all(st.status == "ok" for st in result.steps)
        stopped_midway += result.stopped
        # what serves is a healthy container, and every service is served
        lb = w.lbs["lb1"]
        running = {(c.address, c.port) for c in w.engines.containers.values()}
        assert {(a, p) for *_, a, p in lb.serving()} <= running, k
        assert w.backends_served("lb1") == {"be_api", "be_web"}, k
    assert stopped_midway > 3


def test_a_config_step_after_only_skipped_steps_reloads_nothing_and_says_why() -> None:
    w = World.of(fleet("v2"), before=fleet("v1"))
    w.engines.fail_start = lambda h, n: "no such image" if fails_on("h1", "web", 0)(h, n) else None
    lb = w.lbs["lb1"]
    config = lb.config

    result = w.run()

    configs = [st for st in result.steps if isinstance(st.action, ConfigureLB)]
    assert len(configs) == 2
    for st in configs:
        assert (st.status, st.detail) == (
            "skipped",
            "nothing to write: the steps it follows were skipped (web failed); "
            "HAProxy keeps its config, no reload",
        )
    assert (lb.reloads, result.reloads, lb.config) == (0, 0, config)
    assert set(result.failures) == {"web"} and not result.aborted


def test_a_drain_timeout_removes_the_server_anyway_without_failing() -> None:
    w = World.of(fleet("v2"), before=fleet("v1"))
    old = set(w.servers(DrainServer, "web"))
    w.lbs["lb1"].sessions_stay = old

    result = w.run()

    drains = [st for st in result.steps if isinstance(st.action, DrainServer)]
    assert len(drains) == 4
    assert {(st.status, st.detail) for st in drains} == {
        ("ok", "sessions still open after 30s; removed anyway")
    }
    assert result.ok and not result.failures
    assert old.isdisjoint(s for _, s in w.lbs["lb1"].servers)
    removed = [st for st in result.steps if isinstance(st.action, RemoveContainer)]
    assert len(removed) == 4 and all(st.status == "ok" for st in removed)
    assert all("-v2-" in n for _, n in w.engines.names("web"))


def test_a_bind_the_lb_host_cannot_give_installs_nothing_and_stops_the_pass() -> None:
    w = World.of(fleet("v2"), before=fleet("v1"))
    lb = w.lbs["lb1"]
    config = lb.config
    lb.binds_taken = ["frontend http: 127.0.0.1:8080 is taken by another process"]

    result = w.run()

    assert result.aborted
    assert result.failures == {
        "haproxy": "the new config binds what this host cannot give HAProxy; nothing "
        "installed: frontend http: 127.0.0.1:8080 is taken by another process"
    }
    assert (lb.config, lb.reloads, lb.checked) == (config, 0, {})
    assert len([n for _, n in w.engines.names("web") if "-v1-" in n]) == 4


def test_a_server_the_lb_refuses_to_delete_leaves_with_a_reload_instead() -> None:
    w = World.of(fleet("v2"), before=fleet("v1"))
    old = set(w.servers(DrainServer, "web"))
    w.lbs["lb1"].delete_refused = old

    result = w.run()

    removes = [st for st in result.steps if st.action.kind == "remove-server"]
    assert all(
        st.status == "ok" and st.detail.endswith("; HAProxy will be reloaded instead")
        for st in removes
    )
    write = [st for st in result.steps if isinstance(st.action, ConfigureLB)][-1]
    assert (write.status, write.detail) == ("ok", "reloaded HAProxy (confirmed)")
    assert result.ok and result.reloads == 1 == w.lbs["lb1"].reloads
    assert old.isdisjoint(s for _, s in w.lbs["lb1"].servers)


def test_the_config_after_a_runtime_add_is_checked_while_the_server_comes_up() -> None:
    """One config check per config installed, both made ahead, in the background while
    the new container passes its health gate: the config after the add and the one after
    the old server's removal; neither config step checks again. Nothing checked is left
    behind, also when the server never comes UP."""
    one = desired(service("web", releases=[("v2", 100)], replicas=1), lb_hosts=("lb1",))
    w = World.of(one, before=replace(one, services=(service("web", replicas=1),)))
    lb = w.lbs["lb1"]
    events: list[str] = []
    check, set_weight, install = lb.check, lb.set_weight, lb.install

    def logged_check(text: str) -> Path:
        events.append("check")
        return check(text)

    def logged_weight(backend: str, server: str, weight: int) -> None:
        events.append(f"weight {weight}")
        set_weight(backend, server, weight)

    def logged_install(text: str, checked: Path | None = None) -> bool:
        events.append("install" + (" checked" if checked else ""))
        return install(text, checked)

    lb.check, lb.set_weight, lb.install = logged_check, logged_weight, logged_install  # type: ignore[method-assign]
    assert w.run().ok
    assert events.index("weight 100") < events.index("install checked")
    installs = [e for e in events if e.startswith("install")]
    assert installs == ["install checked", "install checked"]
    assert events.count("check") == 2
    assert lb.checked == {}

    w = World.of(one, before=replace(one, services=(service("web", replicas=1),)))
    w.lbs["lb1"].never_up = {w.servers(AddServer, "web")[0]}
    assert set(w.run().failures) == {"web"}
    assert w.lbs["lb1"].checked == {}


def test_configs_after_several_runtime_adds_are_checked_ahead_once_all_are_added() -> None:
    """Three replicas replaced: both configs (after the three adds, after the three
    removals) are checked ahead, once the last server is added; neither config step
    checks again, and nothing checked is left behind."""
    three = desired(service("web", releases=[("v2", 100)], replicas=3), lb_hosts=("lb1",))
    w = World.of(three, before=replace(three, services=(service("web", replicas=3),)))
    lb = w.lbs["lb1"]
    events: list[str] = []
    check, install = lb.check, lb.install

    def logged_check(text: str) -> Path:
        events.append("check")
        return check(text)

    def logged_install(text: str, checked: Path | None = None) -> bool:
        events.append("install" + (" checked" if checked else ""))
        return install(text, checked)

    lb.check, lb.install = logged_check, logged_install  # type: ignore[method-assign]
    assert w.run().ok
    assert [e for e in events if e.startswith("install")] == ["install checked"] * 2
    assert events.count("check") == 2
    assert lb.checked == {}
