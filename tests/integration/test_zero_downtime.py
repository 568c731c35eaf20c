"""Zero downtime: ten consecutive switches of `web` under steady load through HAProxy,
then a change of the frontend's routes.

One `hey` process loads `/` of the deployment's frontend (127.0.0.1 only) at a steady
~800 requests/s from before the first switch until after the last one is verified. The
switches mix every kind of change a release makes: a new revision, an env change, replica
changes up and down, a canary weight split, a runtime-only weight shift, a release removed
by weight 100 on the other, and a step back to the previous revision. Each switch commits
the change, runs `reconcile apply` (exit 0, not "No changes") and then polls HAProxy, with
a deadline, until what serves is exactly the new state. Afterwards every request hey sent
must have been answered, with a 2xx: 0 failed requests, 0 non-2xx responses.

Reloads are read from the master CLI (`show proc`: the master's reload counter and its
workers): none of the ten switches reloads (new servers are added at runtime) and none
leaves an old worker; only the route change (structure) reloads.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest
from deploy_support import Deployment
from load_support import HAProxyCounters, HeyLoad, HeyReport

from reconciler import identity

WEB = "services/web.yaml"
ENV = "environments/staging.yaml"
LB = "loadbalancer.yaml"
HELLO = "hello from web"

CONCURRENCY = 10  # hey workers, keep-alive connections
QPS_PER_WORKER = 80  # -> ~800 requests/s
MIN_RATE = 500.0  # what the run must achieve, measured
LOAD_CAP_S = 80  # hey stops by itself after this, whatever happens to the test
VERIFY_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Switch:
    name: str
    edits: tuple[tuple[str, str, str], ...]  # (file, old, new), one commit
    revisions: tuple[str, ...]  # web containers afterwards, sorted
    weights: tuple[int, ...]  # be_web server weights afterwards, sorted
    bodies: frozenset[str]  # "revision=.. greeting=.." that serve afterwards
    # HAProxy reloads the switch makes: 0 for every server change (added, weighed,
    # drained, removed at runtime, config written), 1 for a frontend/route/TLS change
    reloads: int = 0


def _bodies(*pairs: tuple[str, str]) -> frozenset[str]:
    return frozenset(f"revision={rev} greeting={greeting}" for rev, greeting in pairs)


INITIAL = Switch("initial deploy", (), ("v1",), (100,), _bodies(("v1", HELLO)))

SWITCHES = (
    Switch("new revision v1 -> v2",
           ((WEB, "revision: v1", "revision: v2"),),
           ("v2",), (100,), _bodies(("v2", HELLO))),
    Switch("env GREETING -> bonjour",
           ((WEB, f"GREETING: {HELLO}", "GREETING: bonjour"),),
           ("v2",), (100,), _bodies(("v2", "bonjour"))),
    Switch("replicas 1 -> 2",
           ((ENV, "replicas: 1", "replicas: 2"),),
           ("v2", "v2"), (100, 100), _bodies(("v2", "bonjour"))),
    Switch("canary v2 90 / v3 10",
           ((WEB, "  - revision: v2\n    weight: 100",
             "  - revision: v2\n    weight: 90\n  - revision: v3\n    weight: 10"),),
           ("v2", "v2", "v3", "v3"), (10, 10, 90, 90),
           _bodies(("v2", "bonjour"), ("v3", "bonjour"))),
    Switch("weights 50 / 50",
           ((WEB, "weight: 90\n  - revision: v3\n    weight: 10",
             "weight: 50\n  - revision: v3\n    weight: 50"),),
           ("v2", "v2", "v3", "v3"), (50, 50, 50, 50),
           _bodies(("v2", "bonjour"), ("v3", "bonjour"))),
    Switch("v3 100, v2 removed",
           ((WEB, "  - revision: v2\n    weight: 50\n  - revision: v3\n    weight: 50",
             "  - revision: v3\n    weight: 100"),),
           ("v3", "v3"), (100, 100), _bodies(("v3", "bonjour"))),
    Switch("back to previous revision v3 -> v2",
           ((WEB, "revision: v3", "revision: v2"),),
           ("v2", "v2"), (100, 100), _bodies(("v2", "bonjour"))),
    Switch("replicas 2 -> 3",
           ((ENV, "replicas: 2", "replicas: 3"),),
           ("v2", "v2", "v2"), (100, 100, 100), _bodies(("v2", "bonjour"))),
    Switch("env GREETING -> hallo",
           ((WEB, "GREETING: bonjour", "GREETING: hallo"),),
           ("v2", "v2", "v2"), (100, 100, 100), _bodies(("v2", "hallo"))),
    Switch("replicas 3 -> 1",
           ((ENV, "replicas: 3", "replicas: 1"),),
           ("v2",), (100,), _bodies(("v2", "hallo"))),
    # structure: a new route in the frontend (the one switch that reloads)
    Switch("route /web added",
           ((LB, "    routes:\n", "    routes:\n      - path_prefix: /web\n        service: web\n"),),
           ("v2",), (100,), _bodies(("v2", "hallo")), reloads=1),
)


@dataclass(frozen=True)
class Timing:
    name: str
    at_s: float  # when the switch began, seconds after the load started
    apply_s: float  # reconcile apply, commit to exit
    verified_s: float  # until the new state was seen serving through HAProxy
    reloads: int  # HAProxy reloads the switch made (the master's reload counter)
    workers: tuple[int, int]  # HAProxy's current and old workers afterwards (show proc)
    hidden: dict[str, dict[str, int]]  # be_web's retries, redispatches, econ, eresp


@pytest.fixture
def dep(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    monkeypatch.setenv("STAGING_DB_PASSWORD", "not-a-real-password")  # for the api service
    d = Deployment(tmp_path_factory.mktemp("zero-downtime"), docker_client)
    try:
        yield d
    finally:
        d.cleanup()


# --------------------------------------------------------------------------- checks


def _web_weights(dep: Deployment) -> tuple[tuple[int, ...], list[str]]:
    """Sorted weights of be_web's servers, and the servers that are not plainly UP."""
    servers = [s for s in dep.haproxy.server_stats() if s.backend == "be_web"]
    not_up = [f"{s.server}: {s.status} {s.check_status}" for s in servers
              if not s.status.startswith("UP") or s.weight == 0]
    return tuple(sorted(s.weight for s in servers)), not_up


def _sample(dep: Deployment, n: int) -> list[str]:
    out = []
    for _ in range(n):
        code, body = dep.get("/")
        # "revision=v2 greeting=hello from web host=... path=/": keep revision and greeting
        out.append(f"{code} {body.partition(' host=')[0]}" if code == 200 else f"{code} {body!r}")
    return out


def _serves(dep: Deployment, want: Switch) -> str | None:
    """None when the world is exactly ``want``; otherwise what differs."""
    revisions = tuple(dep.revisions("web"))
    if revisions != want.revisions:
        return f"web containers {revisions}, want {want.revisions}"
    weights, not_up = _web_weights(dep)
    if weights != want.weights or not_up:
        return f"be_web weights {weights} (not serving: {not_up}), want {want.weights}"
    # 40 requests: enough for smooth weighted round robin to show a 10% share
    seen = _sample(dep, 40)
    bodies = {s.removeprefix("200 ") for s in seen}
    if bodies != set(want.bodies):
        return f"served {sorted(set(seen))}, want {sorted(want.bodies)}"
    return None


def _verify(dep: Deployment, want: Switch, timeout: float = VERIFY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while (why := _serves(dep, want)) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"after {want.name!r}, within {timeout:.0f}s: {why}")
        time.sleep(0.1)


def _web_requests(dep: Deployment) -> int:
    return sum(s.total_sessions for s in dep.haproxy.server_stats() if s.backend == "be_web")


def _wait_load_flowing(dep: Deployment, load: HeyLoad, requests: int = 400) -> None:
    """Poll HAProxy's counters until hey's requests arrive (no fixed sleep)."""
    start = _web_requests(dep)
    deadline = time.monotonic() + 10
    while _web_requests(dep) - start < requests:
        assert load.running(), "hey ended before the test stopped it"
        assert time.monotonic() < deadline, (
            f"load does not reach be_web: {_web_requests(dep) - start} requests in 10s")
        time.sleep(0.05)


def _switch(dep: Deployment, sw: Switch, load_t0: float, counters: HAProxyCounters) -> Timing:
    reloads = dep.reloads()
    workers = dep.haproxy.procs().current_pids
    before = counters.totals("be_web")
    t0 = time.monotonic()
    for rel, old, new in sw.edits:
        dep.edit(rel, old, new, message=sw.name)
    code, out = dep.apply()
    applied = time.monotonic()
    assert code == 0, f"apply of {sw.name!r} exited {code}:\n{out}"
    assert "No changes" not in out, f"{sw.name!r} changed nothing:\n{out}"
    _verify(dep, sw)
    counters.poll()  # the state the switch left, counted now
    hidden = HAProxyCounters.nonzero(HAProxyCounters.minus(counters.totals("be_web"), before))
    procs = dep.haproxy.procs()
    if not sw.reloads:  # the same worker serves on; no old one lingers (there was none)
        assert (procs.current_pids, procs.old_pids) == (workers, ()), (sw.name, procs)
    return Timing(sw.name, t0 - load_t0, applied - t0, time.monotonic() - t0,
                  procs.reloads - reloads, (len(procs.current_pids), len(procs.old_pids)),
                  hidden)


def _print_report(report: HeyReport, load: HeyLoad, timings: list[Timing]) -> None:
    window = sum(t.verified_s for t in timings)
    print(f"\nzero-downtime: {len(timings)} switches in {window:.1f}s under load "
          f"(target {load.target_rate}/s, {CONCURRENCY} keep-alive workers)")
    for i, t in enumerate(timings, 1):
        print(f"  {i:2d}. at +{t.at_s:5.1f}s {t.name:38s} apply {t.apply_s:5.2f}s  "
              f"serving {t.verified_s:5.2f}s  reloads {t.reloads} workers {t.workers}  "
              f"hidden {t.hidden or 0}")
    print(f"  {report.summary()}")


_QUIET_EVENTS = ("exec_", "health_status: healthy", "attach", "resize", "top")


def _print_container_events(dep: Deployment, since_wall: float) -> None:
    """On failure: what happened to the deployment's containers, on the load's clock.
    A container that dies or (re)starts outside a switch is not the reconciler's doing
    (e.g. the Docker daemon was restarted under the test)."""
    print(f"  container events of environment {dep.env} (seconds after the load started):")
    try:
        events = list(dep.client.events(
            since=int(since_wall), until=int(time.time()) + 1, decode=True,
            filters={"type": "container", "label": f"{identity.ENVIRONMENT}={dep.env}"}))
    except docker.errors.DockerException as exc:
        print(f"    (cannot read events: {exc})")
        return
    for e in events:
        action = str(e.get("Action", ""))
        if action.startswith(_QUIET_EVENTS):
            continue
        at = e.get("timeNano", 0) / 1e9 - since_wall
        name = e.get("Actor", {}).get("Attributes", {}).get("name", "?")
        print(f"    +{at:6.2f}s {action:24s} {name}")


# --------------------------------------------------------------------------- the test


def test_ten_switches_under_load_lose_no_request(dep: Deployment) -> None:
    code, out = dep.apply()
    assert code == 0, out
    _verify(dep, INITIAL)

    timings: list[Timing] = []
    with HAProxyCounters(dep.haproxy) as counters, \
            HeyLoad(dep.url("/"), concurrency=CONCURRENCY, qps=QPS_PER_WORKER,
                    max_duration_s=LOAD_CAP_S) as load:
        load_t0, load_wall = time.monotonic(), time.time()
        try:
            _wait_load_flowing(dep, load)
            for sw in SWITCHES:
                timings.append(_switch(dep, sw, load_t0, counters))
                assert load.running(), f"hey ended (cap {LOAD_CAP_S}s) before {sw.name!r} ended"
            switched = time.monotonic() - load_t0
            # the world the last switch left keeps serving the load too
            _wait_load_flowing(dep, load, requests=200)
        except BaseException:
            if load.running():  # what clients saw up to the failure helps to explain it
                _print_report(load.stop(), load, timings)
            _print_container_events(dep, load_wall)
            raise
        report = load.stop()

    _print_report(report, load, timings)
    if report.failed or report.non_2xx:
        _print_container_events(dep, load_wall)
    assert load.stopped_by_us, f"the load (capped at {LOAD_CAP_S}s) did not cover every switch"
    assert report.duration_s >= switched, (report.duration_s, switched)
    assert report.failed == 0, f"{report.failed} failed requests: {report.errors}"
    assert report.non_2xx == 0, f"{report.non_2xx} non-2xx responses: {report.statuses}"
    assert report.rate >= MIN_RATE, f"load too light to mean anything: {report.rate:.0f}/s"
    # what the clients could not see: HAProxy retried or redispatched no request and met
    # no connection or response error on any server (a container stopped before its
    # drain ended shows here while clients still get their 200)
    hidden = {t.name: t.hidden for t in timings if t.hidden}
    assert not hidden, f"HAProxy hid failures from the clients: {hidden}"
    assert counters.polls > 20, counters.polls
    assert not HAProxyCounters.nonzero(counters.totals("be_web")), counters.totals("be_web")
    # reloads: only a change of structure (the route) reloads; new servers, weights,
    # drains and removals go through the runtime API (counts from the master CLI)
    reloads = {t.name: t.reloads for t in timings}
    assert reloads == {sw.name: sw.reloads for sw in SWITCHES}, reloads


# --------------------------------------------------------------------------- drain before stop

SLOW_MS = 6000  # longer than a switch, and than the sample app's 700 ms SIGTERM grace
SLOW_REQUESTS = 4


def test_slow_requests_in_flight_finish_on_the_old_container(dep: Deployment) -> None:
    """A switch while requests slower than the app's shutdown grace are in flight on the
    old replica: each is answered by the old release (so its container was stopped only
    after the drain ended), and HAProxy retried, redispatched or failed nothing (a
    request cut by a stopped container would be retried on the new release, and its
    client would still get a 200)."""
    dep.edit(WEB, "  LOG_LEVEL: info\n", f'  LOG_LEVEL: info\n  DELAY_MS: "{SLOW_MS}"\n',
             "web v1, slow")
    code, out = dep.apply()
    assert code == 0, out
    old = [c.name for c in dep.containers("web")]
    assert len(old) == 1, old

    results: list[tuple[int, str]] = []

    def slow_get() -> None:
        try:
            with urllib.request.urlopen(dep.url("/slow"), timeout=30) as resp:
                status, body = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode()
        except Exception as exc:  # every failure counts
            status, body = 0, f"{type(exc).__name__}: {exc}"
        results.append((status, body.partition(" host=")[0]))

    with HAProxyCounters(dep.haproxy) as counters:
        threads = [threading.Thread(target=slow_get) for _ in range(SLOW_REQUESTS)]
        for t in threads:
            t.start()

        def in_flight() -> int:
            return sum(s.current_sessions for s in dep.haproxy.server_stats()
                       if s.backend == "be_web")

        deadline = time.monotonic() + 5
        while in_flight() < SLOW_REQUESTS:
            assert time.monotonic() < deadline, f"only {in_flight()} slow requests in flight"
            time.sleep(0.02)
        t0 = time.monotonic()
        dep.edit(WEB, "revision: v1", "revision: v2", "web v2")
        dep.edit(WEB, f'  DELAY_MS: "{SLOW_MS}"\n', "", "web v2 fast")
        code, out = dep.apply()
        took = time.monotonic() - t0
        for t in threads:
            t.join(30)
    print(f"\nslow requests: switch took {took:.2f}s; answers {sorted(results)}; "
          f"hidden {HAProxyCounters.nonzero(counters.totals())}")
    assert code == 0, out
    assert dep.revisions("web") == ["v2"]
    assert len(results) == SLOW_REQUESTS, results
    want = f"revision=v1 greeting={HELLO}"
    assert all(r == (200, want) for r in results), (
        f"slow requests in flight during the switch were not all answered by the old "
        f"release: {results}")
    hidden = HAProxyCounters.nonzero(counters.totals())
    assert not hidden, f"HAProxy hid failures from the clients: {hidden}"
    assert not [n for n in old if n in {c.name for c in dep.containers("web")}]
    assert dep.get("/")[1].startswith("revision=v2")
