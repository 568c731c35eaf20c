"""Commits that attack the loop: a rollback to an older signed commit (issue 17, item 3)
and deeply nested YAML (item 7).

Both drive the real CLI (`reconcile watch` as a subprocess following a bare repository,
and `reconcile apply`) against the real Docker engine and HAProxy. Waits have deadlines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner
from deploy_support import Deployment, wait_for
from repo_support import commit, git
from test_watch_signals import db_rows, make_key, metric, release, runs_of, tool
from watch_support import Watch

from reconciler.cli import main


def serving(dep: Deployment, text: str) -> bool:
    try:
        code, body = dep.get("/")
    except OSError:
        return False
    return code == 200 and text in body


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client)
    yield d
    d.cleanup()


def rejections(w: Watch, sha: str) -> list[dict[str, object]]:
    return [e for e in w.logs() if e.get("event") == "commit-rejected" and e.get("commit") == sha]


def watcher_looks_twice_more(w: Watch, check: object) -> None:
    """Let the watcher read the head at least twice more (at --poll 1), asserting
    ``check()`` all the while: it keeps running and still does nothing."""
    seen = metric(w, "reconcile_last_seen_commit_timestamp_seconds") or 0.0
    deadline = time.monotonic() + 30
    while (metric(w, "reconcile_last_seen_commit_timestamp_seconds") or 0.0) < seen + 2.0:
        assert w.proc.poll() is None, w.logs()[-5:]
        assert callable(check) and check()
        assert time.monotonic() < deadline, "the watcher stopped reading the head"
        time.sleep(0.2)


def test_branch_reset_to_an_older_signed_commit_is_refused_by_watch_and_apply(
        dep: Deployment, tmp_path: Path) -> None:
    exe = tool("ssh-keygen", "openssh-client")
    keys = tmp_path / "keys"
    keys.mkdir()
    keytype, b64 = make_key(exe, keys / "allowed").split()[:2]
    signers = keys / "allowed_signers"
    signers.write_text(f"t@t {keytype} {b64}\n")
    git(dep.repo, "config", "gpg.format", "ssh")
    git(dep.repo, "config", "user.signingkey", str(keys / "allowed"))
    git(dep.repo, "config", "commit.gpgsign", "true")
    web = dep.repo / "services" / "web.yaml"
    web.write_text(web.read_text() + "# signed\n")
    older = commit(dep.repo, "web v1, signed")

    w = Watch(dep, "--require-signed", "--allowed-signers", str(signers), drift=2.0)
    try:
        wait_for(lambda: "ok" in runs_of(dep, older), timeout=90, what="the older commit")
        release(dep, "v2")
        newer, _ = w.push("web v2, signed")
        wait_for(lambda: "ok" in runs_of(dep, newer), timeout=90, what="the newer commit")
        wait_for(lambda: serving(dep, "revision=v2"), timeout=30, what="v2 served")

        # The attack: the branch is reset to the older, validly signed commit.
        git(dep.repo, "push", "-q", "--force", "origin", f"{older}:main")
        event = wait_for(lambda: rejections(w, older), timeout=30, what="the rollback refused")[0]
        assert "does not descend from" in str(event["message"]), event
        assert "--allow-rollback" in str(event["message"]), event
        runs_before = len(runs_of(dep, older))
        watcher_looks_twice_more(w, lambda: serving(dep, "revision=v2"))
        assert dep.revisions("web") == ["v2"]
        assert len(runs_of(dep, older)) == runs_before  # never applied
        assert len(rejections(w, older)) == 1
        assert metric(w, 'reconcile_failures_total{kind="rollback"}') == 1.0

        # `reconcile apply` of the reset branch refuses it too, and changes nothing.
        git(dep.repo, "reset", "-q", "--hard", older)
        code, out = dep.apply()
        assert code == 1, out
        assert "does not descend from" in out and "Traceback" not in out, out
        assert dep.revisions("web") == ["v2"] and serving(dep, "revision=v2")

        # The operator's explicit decision: applied and recorded.
        code, out = dep.cli("apply", "--allow-rollback", "--health-timeout", "20")
        assert code == 0, out
        assert serving(dep, "revision=v1") and dep.revisions("web") == ["v1"]
        recorded = db_rows(dep, "SELECT summary FROM runs WHERE status = 'rollback' "
                                "AND commit_id = ?", (older,))
        assert recorded and "by the operator" in recorded[0][0], recorded
        # The watcher follows that decision (its drift passes stay at the older commit).
        n = len(runs_of(dep, older))
        wait_for(lambda: len(runs_of(dep, older)) > n or db_rows(
            dep, "SELECT looks FROM runs WHERE commit_id = ? ORDER BY id DESC LIMIT 1",
            (older,))[0][0] > 1, timeout=30, what="a watcher pass at the older commit")
        watcher_looks_twice_more(w, lambda: serving(dep, "revision=v1"))
        assert dep.revisions("web") == ["v1"]
    finally:
        code = w.stop()
    assert code == 0


def test_deeply_nested_yaml_is_rejected_and_watch_keeps_repairing_drift(
        dep: Deployment) -> None:
    w = Watch(dep, drift=2.0)
    try:
        first = git(dep.repo, "rev-parse", "HEAD")
        wait_for(lambda: "ok" in runs_of(dep, first), timeout=90, what="the first deploy")
        wait_for(lambda: serving(dep, "revision=v1"), timeout=30, what="v1 served")

        # 1000 nested flow sequences: 2 KB that used to exhaust Python's stack.
        (dep.repo / "services" / "deep.yaml").write_text(
            "apiVersion: reconciler/v1\nkind: Service\nname: deep\nimage: " + "[" * 1000
            + "]" * 1000 + "\n")
        bad, _ = w.push("deeply nested")
        event = wait_for(lambda: rejections(w, bad), timeout=30, what="the nested commit")[0]
        message = str(event["message"])
        assert "services/deep.yaml:4:" in message, message
        assert "nested more than 64 levels deep" in message, message
        assert w.proc.poll() is None, "watch exited on a hostile commit"
        assert runs_of(dep, bad) == []

        # Drift is still repaired at the last good commit.
        victim = dep.containers("web")[0]
        victim.remove(force=True)
        wait_for(lambda: [c.id for c in dep.containers("web") if c.status == "running"]
                 not in ([], [victim.id]), timeout=30, what="drift repaired")
        assert w.proc.poll() is None
        wait_for(lambda: serving(dep, "revision=v1"), timeout=30, what="v1 served again")
        assert runs_of(dep, bad) == []

        # validate names the file and line, with no traceback.
        r = CliRunner().invoke(main, ["validate", "--repo", str(dep.repo)])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
        assert "services/deep.yaml:4:" in r.stderr and "nested more than" in r.stderr, r.stderr
    finally:
        code = w.stop()
    assert code == 0
