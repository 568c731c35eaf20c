"""Documented promises of `reconcile watch` (docs/operations.md "Watching a branch",
"Changed by hand", the metrics table; reconciler/watch/) held against the real Docker
engine and a real HAProxy, through the real CLI (`python -m reconciler watch`):

1. Bad input changes nothing: a head whose manifests fail the checks is rejected once
   (one log line, `reconcile_passes_total{outcome="rejected"}` and
   `reconcile_failures_total{kind="invalid"}` +1 however many passes run while it is the
   head), has no history row, leaves container ids, the config's bytes and HAProxy's
   reload counter as they were; drift is still repaired at the last good commit
   meanwhile; a fixed commit on top is applied.
2. Transient errors (the Docker engine goes away) are retried after 1 s doubling, each
   delay times a jitter factor in [0.5, 1.5], logged (`delay_s`) and waited; HAProxy
   keeps serving and nothing is changed meanwhile; the first good pass resets the count.
3. Drift by hand, repaired within a drift interval without a reload, and counted and
   logged as drift: a weight or the maint state set over the stats socket, a weight
   changed in the installed config file, a server line deleted from it.

1 and 3 share one deployment and one watcher (module scope); 2 has its own (its watcher
reaches the engine through a socket path the test takes away). Test_watch.py holds the
first deploy, a release, a container stopped by hand and a failing release;
test_hostile_commits.py a nested-YAML head with a container removed meanwhile;
test_self_healing.py containers lost by hand; test_watch_signals.py signed heads.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
from deploy_support import Deployment, wait_for
from fault_support import History, Traffic
from repo_support import edit
from watch_support import Watch

from reconciler.lb.haproxy.stats import parse_servers_state

DRIFT = 2.0  # --drift-interval of the watchers here
BAD_SPOT = "environments/staging.yaml:15:15: services.web.replicas: 'one' is not of type 'integer'"


# --------------------------------------------------------------------------- helpers


def samples(w: Watch) -> dict[str, float]:
    """Every sample of /metrics: ``name{labels}`` -> value ({} while starting)."""
    out = {}
    for line in w.metrics().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def sample(w: Watch, name: str) -> float:
    return samples(w).get(name, 0.0)


PASSES_OK = 'reconcile_passes_total{outcome="ok"}'
REJECTED = 'reconcile_passes_total{outcome="rejected"}'
INVALID = 'reconcile_failures_total{kind="invalid"}'
DRIFTED = "reconcile_drift_detected_total"
DRIFT_PASSES = 'reconcile_pass_duration_seconds_count{kind="drift"}'


def events(w: Watch, event: str, after: int = 0) -> list[dict[str, Any]]:
    """Log events of one kind among the log lines from index ``after`` on."""
    return [e for e in w.logs()[after:] if e.get("event") == event]


def when(e: dict[str, Any]) -> float:
    """The event's time (JSON log, UTC, milliseconds) as Unix time."""
    return datetime.strptime(str(e["time"]).replace("Z", "+0000"),
                             "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def serving(dep: Deployment) -> bool:
    try:
        code, body = dep.get("/")
    except OSError:
        return False
    return code == 200 and body.startswith("revision=v1")


def servers(dep: Deployment) -> dict[tuple[str, str], int]:
    """(backend, server) -> weight, as HAProxy's runtime has them."""
    return {(s.backend, s.server): s.weight
            for s in parse_servers_state(dep.haproxy.stats.command("show servers state"))}


def web_server(dep: Deployment) -> str:
    return sorted(s for b, s in servers(dep) if b == "be_web")[0]


def world(dep: Deployment) -> dict[str, object]:
    return {
        "containers": sorted(c.id for c in dep.containers()),
        "config": dep.haproxy.paths.config.read_bytes(),
        "reloads": dep.reloads(),
        "weights": servers(dep),
    }


def runs_of(dep: Deployment, sha: str) -> list[str]:
    h = History(dep.state)
    try:
        db = h._conn()
        if db is None:
            return []
        return [r[0] for r in db.execute(
            "SELECT status FROM runs WHERE commit_id = ? ORDER BY id", (sha,))]
    finally:
        h.close()


def last_run(dep: Deployment) -> int:
    h = History(dep.state)
    try:
        return h.last_run()
    finally:
        h.close()


def passes_while(w: Watch, n: int, check: Callable[[], None], timeout: float = 60) -> None:
    """Let ``n`` more drift passes of ``w`` end, calling ``check()`` all the while."""
    target = sample(w, DRIFT_PASSES) + n
    deadline = time.monotonic() + timeout
    while sample(w, DRIFT_PASSES) < target:
        assert w.proc.poll() is None, w.logs()[-5:]
        check()
        assert time.monotonic() < deadline, f"fewer than {n} drift passes in {timeout}s"
        time.sleep(0.2)
    check()


def at_rest(dep: Deployment, w: Watch) -> None:
    """Nothing left to do, and one whole drift pass ended since."""
    wait_for(lambda: dep.plan()[1]["actions"] == [], timeout=60, what="nothing to do")
    passes_while(w, 1, lambda: None)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    mp = pytest.MonkeyPatch()
    mp.setenv("STAGING_DB_PASSWORD", "not-a-real-password")
    d = Deployment(tmp_path_factory.mktemp("watchp"), docker_client)
    try:
        code, out = d.apply()
        assert code == 0, out
        yield d
    finally:
        d.cleanup()
        mp.undo()


@pytest.fixture(scope="module")
def watch(dep: Deployment) -> Iterator[Watch]:
    w = Watch(dep, drift=DRIFT)
    try:
        wait_for(lambda: sample(w, PASSES_OK) >= 1, timeout=60, what="the watcher's first pass")
        yield w
    finally:
        code = w.stop()
    assert code == 0, w.logs()[-5:]


# --------------------------------------------------------------------------- 1. bad input


def test_an_invalid_head_is_rejected_once_changes_nothing_and_a_fix_applies(
        dep: Deployment, watch: Watch) -> None:
    w = watch
    at_rest(dep, w)
    before, run_before, m0 = world(dep), last_run(dep), samples(w)
    ids_before = {c.id for c in dep.containers()}

    edit(dep.repo, "environments/staging.yaml", "replicas: 1", "replicas: one")
    bad, _ = w.push("web replicas: one")
    rejected = wait_for(lambda: [e for e in events(w, "commit-rejected")
                                 if e.get("commit") == bad], timeout=30, what="the rejection")
    assert BAD_SPOT in str(rejected[0]["message"]), rejected
    assert rejected[0]["level"] == "error"

    # Passes go on while the invalid commit is the head: nothing is counted or said
    # again, nothing is recorded for it, nothing changes.
    def unchanged() -> None:
        assert serving(dep)
        assert runs_of(dep, bad) == []

    passes_while(w, 3, unchanged)
    m1 = samples(w)
    assert m1[REJECTED] == m0.get(REJECTED, 0) + 1, (m0.get(REJECTED), m1[REJECTED])
    assert m1[INVALID] == m0.get(INVALID, 0) + 1, (m0.get(INVALID), m1[INVALID])
    assert len([e for e in events(w, "commit-rejected") if e.get("commit") == bad]) == 1
    assert runs_of(dep, bad) == []
    assert last_run(dep) == run_before, "a run was recorded while the invalid head stood"
    assert world(dep) == before, "an invalid head changed the world"

    # Drift is still repaired meanwhile, at the last good commit
    # ("meanwhile drift passes keep the hosts at the last good commit").
    server = web_server(dep)
    assert dep.haproxy.stats.command(f"set weight be_web/{server} 7").strip() == ""
    t0 = time.monotonic()
    wait_for(lambda: servers(dep)[("be_web", server)] == 100, timeout=DRIFT + 20,
             what="the weight set by hand repaired under the invalid head")
    print(f"\nweight repaired under the invalid head after {time.monotonic() - t0:.1f}s")
    wait_for(lambda: sample(w, DRIFTED) == m1.get(DRIFTED, 0) + 1, timeout=30,
             what="the repair counted as drift")
    passes_while(w, 2, unchanged)
    m2 = samples(w)
    assert m2[REJECTED] == m1[REJECTED] and m2[INVALID] == m1[INVALID], (m1, m2)
    assert len([e for e in events(w, "commit-rejected") if e.get("commit") == bad]) == 1
    after = world(dep)
    assert after == before, "the repair changed more than the weight"

    # A fixed commit on top is applied.
    edit(dep.repo, "environments/staging.yaml", "replicas: one", "replicas: 2")
    fixed, _ = w.push("web replicas: 2")
    wait_for(lambda: "ok" in runs_of(dep, fixed), timeout=90, what="the fixed commit applied")
    wait_for(lambda: sample(w, f'reconcile_last_applied_commit_info{{commit="{fixed}"}}') == 1,
             timeout=30, what="the fixed commit in the metrics")
    web = dep.containers("web")
    assert len(web) == 2 and all(c.status == "running" for c in web), web
    assert ids_before < {c.id for c in dep.containers()}  # the old ones kept, one added
    assert serving(dep)
    m3 = samples(w)
    assert m3[REJECTED] == m1[REJECTED] and m3[INVALID] == m1[INVALID], (m1, m3)


# --------------------------------------------------------------------------- 3. drift


def _runtime_weight(dep: Deployment) -> Callable[[], bool]:
    server = web_server(dep)
    assert dep.haproxy.stats.command(f"set weight be_web/{server} 7").strip() == ""
    assert servers(dep)[("be_web", server)] == 7
    return lambda: servers(dep)[("be_web", server)] == 100


def _runtime_maint(dep: Deployment) -> Callable[[], bool]:
    server = web_server(dep)

    def admin() -> tuple[str, ...]:
        text = dep.haproxy.stats.command("show servers state be_web")
        return next(s.admin for s in parse_servers_state(text) if s.server == server)

    assert dep.haproxy.stats.command(f"set server be_web/{server} state maint").strip() == ""
    assert admin() == ("maint",)
    return lambda: admin() == ()


def _file(dep: Deployment, change: Callable[[list[str]], list[str]]) -> Callable[[], bool]:
    path = dep.haproxy.paths.config
    installed = path.read_bytes()
    lines = installed.decode().splitlines(keepends=True)
    edited = "".join(change(lines))
    assert edited.encode() != installed
    path.write_text(edited)  # as an editor would: in place, same file
    return lambda: path.read_bytes() == installed


def _file_weight(dep: Deployment) -> Callable[[], bool]:
    server = web_server(dep)

    def change(lines: list[str]) -> list[str]:
        hit = [i for i, x in enumerate(lines) if x.split()[:2] == ["server", server]]
        assert len(hit) == 1 and " weight 100 " in lines[hit[0]], lines
        lines[hit[0]] = lines[hit[0]].replace(" weight 100 ", " weight 7 ")
        return lines

    return _file(dep, change)


def _file_server_removed(dep: Deployment) -> Callable[[], bool]:
    api = sorted(s for b, s in servers(dep) if b == "be_api")[0]

    def change(lines: list[str]) -> list[str]:
        kept = [x for x in lines if x.split()[:2] != ["server", api]]
        assert len(kept) == len(lines) - 1
        return kept

    return _file(dep, change)


DRIFTS: dict[str, Callable[[Deployment], Callable[[], bool]]] = {
    "weight-set-over-the-stats-socket": _runtime_weight,
    "maint-set-over-the-stats-socket": _runtime_maint,
    "weight-changed-in-the-config-file": _file_weight,
    "server-line-deleted-from-the-config-file": _file_server_removed,
}


@pytest.mark.parametrize("fault", list(DRIFTS))
def test_drift_by_hand_is_repaired_within_a_drift_interval_and_reported(
        dep: Deployment, watch: Watch, fault: str) -> None:
    w = watch
    at_rest(dep, w)
    before, m0, logged = world(dep), samples(w), len(w.logs())

    repaired = DRIFTS[fault](dep)
    t0 = time.monotonic()
    assert not repaired()
    # a drift interval, plus one pass (observe, runtime API, write the file), with room
    # for a loaded machine
    wait_for(repaired, timeout=DRIFT + 20, what=f"{fault}: repaired")
    took = time.monotonic() - t0
    print(f"\n{fault}: repaired after {took:.1f}s (drift interval {DRIFT}s)")

    wait_for(lambda: sample(w, DRIFTED) == m0.get(DRIFTED, 0) + 1, timeout=30,
             what=f"{fault}: counted as drift")
    wait_for(lambda: events(w, "pass", after=logged), timeout=10, what=f"{fault}: logged")
    # one repair, then nothing more to do: the count stays
    passes_while(w, 2, lambda: None)
    assert sample(w, DRIFTED) == m0.get(DRIFTED, 0) + 1
    passes = events(w, "pass", after=logged)
    assert [(e["reason"], e["outcome"]) for e in passes] == [("drift", "ok")], passes
    # the world is back as it was: same containers, same bytes in the file, same
    # weights, and no reload (the runtime API and a file write repair both)
    assert world(dep) == before
    m1 = samples(w)
    assert m1.get("reconcile_haproxy_reloads_total", 0) == m0.get(
        "reconcile_haproxy_reloads_total", 0)
    assert m1["reconcile_outcome_mismatches"] == 0
    assert m1.get('reconcile_passes_total{outcome="failed"}', 0) == m0.get(
        'reconcile_passes_total{outcome="failed"}', 0)
    assert serving(dep)


# --------------------------------------------------------------------------- 2. backoff


def _engine_socket() -> Path:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    assert host.startswith("unix://"), f"this test needs a unix socket engine, not {host}"
    return Path(host.removeprefix("unix://"))


def test_an_unreachable_engine_backs_off_with_jitter_serves_and_a_good_pass_resets(
        tmp_path: Path, docker_client: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGING_DB_PASSWORD", "not-a-real-password")
    dep = Deployment(tmp_path, docker_client)
    # The watcher's engine: a path that points at the real socket only while the test
    # says so (a short directory: unix socket paths are limited to 107 bytes).
    sockdir = Path(tempfile.mkdtemp(prefix="engine-"))
    engine = sockdir / "docker.sock"
    try:
        code, out = dep.apply()
        assert code == 0, out
        # Drift left while the engine is away must stay as it is until a pass works.
        server = web_server(dep)
        assert dep.haproxy.stats.command(f"set weight be_web/{server} 7").strip() == ""
        w = Watch(dep, drift=DRIFT, env={"DOCKER_HOST": f"unix://{engine}"})
        try:
            _backoff(dep, w, engine, server)
        finally:
            assert w.stop() == 0, w.logs()[-5:]
    finally:
        dep.cleanup()
        engine.unlink(missing_ok=True)
        sockdir.rmdir()


def _backoff(dep: Deployment, w: Watch, engine: Path, server: str) -> None:
    with Traffic(dep.url()) as traffic:
        def failing() -> list[dict[str, Any]]:
            assert w.proc.poll() is None, w.logs()[-5:]
            assert servers(dep)[("be_web", server)] == 7, "changed while the engine was away"
            found = events(w, "transient-error")
            if found:  # the metrics server is up
                assert w.healthz() == 200
            return found

        wait_for(lambda: len(failing()) >= 4, timeout=90, what="four failed attempts")
        engine.symlink_to(_engine_socket())  # the engine is back
        first_good = wait_for(lambda: events(w, "pass"), timeout=90,
                              what="the first good pass")[0]
        wait_for(lambda: servers(dep)[("be_web", server)] == 100, timeout=30,
                 what="the drift repaired by the first good pass")
    traffic.assert_served()  # HAProxy served throughout

    tried = [e for e in events(w, "transient-error") if when(e) < when(first_good)]
    assert len(tried) >= 4, tried
    assert all(e["what"] == "pass" for e in tried), tried
    assert all("cannot reach the local Docker engine" in e["message"] for e in tried), tried
    assert [e["attempt"] for e in tried] == list(range(1, len(tried) + 1)), tried
    delays = [float(e["delay_s"]) for e in tried]
    for e, d in zip(tried, delays, strict=True):
        assert f"retrying in {d:.1f}s" in e["message"], e
        # 1 s doubling, times a factor in [0.5, 1.5]
        base = min(60.0, 2.0 ** (e["attempt"] - 1))
        assert 0.5 * base - 0.001 <= d <= 1.5 * base + 0.001, (e["attempt"], d, delays)
    # each delay is waited, then the next attempt comes (within a --poll of 1 s, on a
    # loaded machine); the first good pass too came only after the last delay
    times = [when(e) for e in (*tried, first_good)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(f"\ndelays {delays}; gaps {[round(g, 2) for g in gaps]}")
    for d, gap in zip(delays, gaps, strict=True):
        assert d - 0.05 <= gap <= d + 6, (delays, gaps)
    m = samples(w)
    assert m['reconcile_failures_total{kind="pass"}'] == len(tried), m
    assert 'reconcile_failures_total{kind="source"}' not in m, m
    assert m[PASSES_OK] >= 1, m

    # The first good pass reset the count: the next failure waits about 1 s again.
    engine.unlink()
    again = wait_for(lambda: [e for e in events(w, "transient-error")
                              if when(e) > when(first_good)], timeout=DRIFT + 30,
                     what="a failure after the good pass")[0]
    assert again["attempt"] == 1, again
    assert 0.5 <= float(again["delay_s"]) <= 1.5, again
    # not a fixed schedule: the jitter factors differ
    factors = [d / min(60.0, 2.0 ** (e["attempt"] - 1))
               for e, d in zip(tried, delays, strict=True)]
    factors.append(float(again["delay_s"]))
    assert max(factors) - min(factors) > 0.02, f"no jitter: factors {factors}"
    engine.symlink_to(_engine_socket())
    wait_for(lambda: sample(w, PASSES_OK) >= 2, timeout=60,
             what="a good pass once the engine is back again")
