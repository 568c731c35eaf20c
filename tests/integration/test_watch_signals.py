"""`reconcile watch`: SIGTERM in the middle of a release switch, and signed commits.

Both drive the real CLI (`python -m reconciler watch`) against a local bare repository
of a scratch copy of sample-repo, with the real Docker engine and HAProxy (the `Watch`
helper of test_watch.py). Waits have deadlines; nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from deploy_support import Deployment, wait_for
from fault_support import assert_servers_point_at_containers
from repo_support import commit, git
from test_watch import Watch, serving

from reconciler import identity

WEB = "services/web.yaml"


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client)
    yield d
    d.cleanup()


def release(dep: Deployment, revision: str) -> None:
    """Make web's only release ``revision`` in the work tree (not committed)."""
    f = dep.repo / WEB
    text, n = re.subn(r"(?m)^(\s*- revision: )v\d+$", rf"\g<1>{revision}", f.read_text())
    assert n == 1, text
    f.write_text(text)


def db_rows(dep: Deployment, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    path = dep.state / "history.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        db.close()


def runs_of(dep: Deployment, sha: str) -> list[str]:
    """Statuses of the runs of ``sha``, oldest first ([] before the watcher made any)."""
    return [r[0] for r in db_rows(dep, "SELECT status FROM runs WHERE commit_id = ? "
                                       "ORDER BY id", (sha,))]


def running_servers(dep: Deployment) -> set[str]:
    return {identity.server_name("local", c.name) for c in dep.containers()
            if c.status == "running"}


def metric(w: Watch, name: str) -> float | None:
    """The value of one sample (``name`` with its labels, as printed), None if absent."""
    for line in w.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


# --------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize(
    ("kind", "when"),
    [
        ("start-container", "after the first step (a new container started)"),
        ("configure-haproxy", "after the reload that added the new servers (both releases "
                              "in HAProxy, the old one about to drain)"),
        ("remove-server", "after an old server left HAProxy through the runtime API (its "
                          "container still running)"),
    ],
)
def test_sigterm_mid_switch_exits_0_and_leaves_haproxy_on_running_containers(
        dep: Deployment, kind: str, when: str) -> None:
    dep.edit("environments/staging.yaml", "replicas: 1", "replicas: 2", "2 web replicas")
    w = Watch(dep, drift=60.0)
    try:
        wait_for(lambda: "ok" in runs_of(dep, git(dep.repo, "rev-parse", "HEAD")),
                 timeout=90, what="the first deploy")
        wait_for(lambda: serving(dep, "revision=v1"), timeout=30, what="v1 served")

        release(dep, "v2")
        sha, _ = w.push("web v2")

        def started_run() -> int | None:
            rows = db_rows(dep, "SELECT r.id FROM runs r JOIN steps s "
                                "ON s.run_id = r.id WHERE r.commit_id = ? AND s.kind = ?",
                           (sha, kind))
            return int(rows[0][0]) if rows else None

        deadline = time.monotonic() + 90
        while (run_id := started_run()) is None:  # a tight loop: steps can be quick
            assert time.monotonic() < deadline, f"no {kind} step of the v2 pass"
            time.sleep(0.02)
        status_then = db_rows(dep, "SELECT status FROM runs WHERE id = ?", (run_id,))[0][0]
        w.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert status_then == "running", (
            f"the pass was over ({status_then}) before SIGTERM could be sent {when}")
        code = w.proc.wait(timeout=45)
        took = time.monotonic() - t0
    finally:
        w.stop()
    print(f"\nSIGTERM {when}: exit {code} after {took:.2f}s")
    assert code == 0, w.logs()[-5:]
    assert took < 30, f"exit took {took:.1f}s after SIGTERM"

    # The pass stopped between steps and was closed in the history.
    steps_done = [r[0] for r in db_rows(dep, "SELECT kind FROM steps WHERE run_id = ? "
                                             "ORDER BY step", (run_id,))]
    status = db_rows(dep, "SELECT status FROM runs WHERE id = ?", (run_id,))[0][0]
    assert status == "stopped", (status, steps_done)
    events = w.logs()
    assert any(e.get("event") == "stop" for e in events)
    assert any(e.get("event") == "pass" and e.get("outcome") == "stopped" for e in events)

    # HAProxy points only at running containers (every server in any state, in its
    # runtime and its config file: a DOWN one left on a removed container too), and serves.
    stats = dep.haproxy.server_stats()
    assert any(s.status.startswith("UP") for s in stats), stats
    try:
        assert_servers_point_at_containers(dep, dep.client)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; steps done: {steps_done}") from None
    print(f"steps done: {', '.join(steps_done)}; HAProxy: "
          f"{', '.join(f'{s.server[6:]} {s.status}' for s in stats if s.backend == 'be_web')}")
    for _ in range(20):
        code_, body = dep.get("/")
        assert code_ == 200 and "revision=v" in body, (code_, body)

    # A following apply converges, then nothing is left to do.
    code, out = dep.apply()
    assert code == 0, out
    code, again = dep.plan()
    assert code == 0 and again["actions"] == [], again
    assert dep.revisions("web") == ["v2", "v2"]
    assert all(c.status == "running" for c in dep.containers("web"))
    for _ in range(10):
        assert serving(dep, "revision=v2")
    stats = dep.haproxy.server_stats()
    assert [s.server for s in stats if s.status.startswith("UP")] == [s.server for s in stats]
    assert len(stats) == 3, stats  # 2 web + 1 api, all UP
    assert_servers_point_at_containers(dep, dep.client)


# --------------------------------------------------------------------------- signed


def ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        pytest.fail("ssh-keygen not found: the signed-commit test needs it to make an SSH "
                    "signing key (Debian package openssh-client; .ci/setup installs it)")
    return exe


def make_key(exe: str, path: Path) -> str:
    """A new ed25519 key without passphrase at ``path``; its public key line."""
    subprocess.run([exe, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def test_require_signed_applies_only_commits_signed_by_an_allowed_key(
        dep: Deployment, tmp_path: Path) -> None:
    exe = ssh_keygen()
    keys = tmp_path / "keys"
    keys.mkdir()
    allowed_pub = make_key(exe, keys / "allowed")
    make_key(exe, keys / "stranger")
    # ssh-keygen(1) ALLOWED SIGNERS: "principals [options] keytype base64-key"
    signers = keys / "allowed_signers"
    keytype, b64 = allowed_pub.split()[:2]
    signers.write_text(f"t@t {keytype} {b64}\n")
    git(dep.repo, "config", "gpg.format", "ssh")
    git(dep.repo, "config", "user.signingkey", str(keys / "allowed"))
    git(dep.repo, "config", "commit.gpgsign", "true")

    # a signed head: applied
    release(dep, "v2")
    signed = commit(dep.repo, "web v2, signed")
    w = Watch(dep, "--require-signed", "--allowed-signers", str(signers), drift=60.0)
    try:
        wait_for(lambda: "ok" in runs_of(dep, signed), timeout=90, what="the signed commit")
        wait_for(lambda: serving(dep, "revision=v2"), timeout=30, what="v2 served")
        wait_for(lambda: metric(w, f'reconcile_last_applied_commit_info{{commit="{signed}"}}')
                 == 1.0, timeout=30, what="the signed commit in the metrics")

        # an unsigned head, then one signed by a key that is not allowed: rejected,
        # reported once each, never applied; v2 keeps serving
        bad_heads = (("v3", "unsigned", ("-c", "commit.gpgsign=false")),
                     ("v1", "signed by a stranger",
                      ("-c", f"user.signingkey={keys / 'stranger'}")))
        for rejected, (rev, how, cfg) in enumerate(bad_heads, 1):
            release(dep, rev)
            git(dep.repo, "add", "-A")
            git(dep.repo, *cfg, "commit", "-q", "-m", f"web {rev}, {how}")
            bad = git(dep.repo, "rev-parse", "HEAD")
            git(dep.repo, "push", "-q", "origin", "HEAD:main")

            def rejection(bad: str = bad) -> list[dict[str, object]]:
                return [e for e in w.logs()
                        if e.get("event") == "commit-rejected" and e.get("commit") == bad]

            event = wait_for(rejection, timeout=30, what=f"the {how} commit rejected")[0]
            assert "not signed by an allowed key" in str(event["message"]), event
            assert event["level"] == "error"
            wait_for(lambda n=rejected: metric(w, 'reconcile_failures_total{kind="signature"}')
                     == float(n), timeout=10, what="the signature failure counted")
            # The watcher reads the head again (twice at --poll 1) and still does nothing.
            seen = metric(w, "reconcile_last_seen_commit_timestamp_seconds") or 0.0
            deadline = time.monotonic() + 30
            while (metric(w, "reconcile_last_seen_commit_timestamp_seconds") or 0.0) \
                    < seen + 2.0:
                assert serving(dep, "revision=v2")
                assert time.monotonic() < deadline, "the watcher stopped reading the head"
                time.sleep(0.2)
            assert runs_of(dep, bad) == []
            assert dep.revisions("web") == ["v2"]
            assert serving(dep, "revision=v2")
            assert metric(
                w, f'reconcile_last_applied_commit_info{{commit="{signed}"}}') == 1.0
            assert len(rejection()) == 1

        # a signed commit on top: applied
        release(dep, "v3")
        good, _ = w.push("web v3, signed")
        wait_for(lambda: "ok" in runs_of(dep, good), timeout=90, what="the signed commit on top")
        wait_for(lambda: serving(dep, "revision=v3"), timeout=30, what="v3 served")
        wait_for(lambda: metric(w, f'reconcile_last_applied_commit_info{{commit="{good}"}}')
                 == 1.0, timeout=30, what="the new signed commit in the metrics")
        assert dep.revisions("web") == ["v3"]
    finally:
        code = w.stop()
    assert code == 0
    rejections = [e for e in w.logs() if e.get("event") == "commit-rejected"]
    assert len(rejections) == 2, json.dumps(rejections, indent=1)
