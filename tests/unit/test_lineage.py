"""A head must descend from the last applied commit (reconciler.desired.lineage, Store.last_commit)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.desired.lineage import RollbackRefused, check_forward, descends
from reconciler.store import Retention, Store


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def test_descendants_pass_and_resets_or_other_branches_are_refused(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "a")
    a = git(repo, "rev-parse", "HEAD")
    git(repo, "commit", "-q", "--allow-empty", "-m", "b")
    b = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "other", a)
    git(repo, "commit", "-q", "--allow-empty", "-m", "c")
    c = git(repo, "rev-parse", "HEAD")
    gd = repo / ".git"
    assert descends(gd, a, b) and descends(gd, b, b)
    assert not descends(gd, b, a)  # reset to an older commit
    assert not descends(gd, b, c)  # a commit of another branch
    assert not descends(gd, "0" * 40, b)  # the last applied commit is not there at all
    check_forward(gd, "production", None, a)  # nothing applied yet
    check_forward(gd, "production", a, b)
    with pytest.raises(RollbackRefused, match=r"does not descend from .* --allow-rollback"):
        check_forward(gd, "production", b, a)


def test_last_commit_skips_manual_records_and_survives_pruning(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    assert store.last_commit("production") is None
    for commit in ("a" * 40, "b" * 40):
        store.finish_run(store.start_run("production", commit, "{}"), "ok", {}, "")
    store.finish_run(store.start_run("staging", "c" * 40, "{}"), "ok", {}, "")
    for _ in range(3):  # canary decisions by hand: commit "-"
        store.finish_run(store.start_run("production", "-", "{}"), "promoted", {}, "")
    assert store.last_commit("production") == "b" * 40
    store.prune("production", Retention(days=0, runs=1))
    assert store.last_commit("production") == "b" * 40  # kept beside the newest run
    store.close()
