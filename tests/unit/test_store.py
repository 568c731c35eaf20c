"""The history database: idle looks folded into one run, retention, upgrades of
databases made by earlier versions, and its size."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.store import Retention, Store

STEP = {"kind": "set-weight", "host": "local", "service": "web",
        "description": "set weight", "reason": "because"}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "history.sqlite")


def idle(store: Store, env: str = "prod", commit: str = "c1", plan: str = "{}") -> int:
    return store.finish_idle(store.start_run(env, commit, plan), "0/0 steps ok")


def changed(store: Store, env: str = "prod", commit: str = "c1") -> int:
    run = store.start_run(env, commit, '{"actions": [1]}')
    store.record_step(run, 1, STEP, "ok", "", 0.1)
    store.finish_run(run, "ok", {}, "1/1 steps ok")
    return run


def rows(store: Store) -> list[tuple[object, ...]]:
    return store.db.execute(
        "SELECT environment, commit_id, status, looks FROM runs ORDER BY id").fetchall()


def test_idle_looks_at_one_commit_are_one_run(store: Store) -> None:
    first = idle(store)
    assert all(idle(store) == first for _ in range(999))
    (run,) = store.runs()
    assert (run.id, run.status, run.looks) == (first, "nothing-to-do", 1000)
    assert run.last_look_at is not None and run.last_look_at >= run.started_at


def test_runs_that_change_or_fail_something_are_kept_and_break_the_fold(store: Store) -> None:
    idle(store)
    idle(store)
    changed(store)
    idle(store)
    idle(store)
    failed = store.start_run("prod", "c1", "{}")
    store.finish_run(failed, "failed", {"web": "unhealthy"}, "0/0 steps ok; web failed")
    idle(store)
    idle(store, commit="c2")  # another commit
    idle(store, commit="c2", plan='{"notes": ["service web held"]}')  # another plan
    assert rows(store) == [
        ("prod", "c1", "nothing-to-do", 2),
        ("prod", "c1", "ok", 1),
        ("prod", "c1", "nothing-to-do", 2),
        ("prod", "c1", "failed", 1),
        ("prod", "c1", "nothing-to-do", 1),
        ("prod", "c2", "nothing-to-do", 1),
        ("prod", "c2", "nothing-to-do", 1),
    ]


def test_environments_fold_separately(store: Store) -> None:
    for _ in range(3):
        idle(store, "a")
        idle(store, "b")
    assert rows(store) == [("a", "c1", "nothing-to-do", 3), ("b", "c1", "nothing-to-do", 3)]


def test_prune_keeps_days_and_runs_and_always_the_newest(store: Store) -> None:
    old = [changed(store) for _ in range(5)]
    store.db.execute("UPDATE runs SET started_at = 0, finished_at = 1")  # long ago
    other = changed(store, env="other")
    store.db.execute("UPDATE runs SET started_at = 0, finished_at = 1 WHERE id = ?", (other,))
    recent = [changed(store) for _ in range(4)]
    assert store.prune("prod", Retention(days=1, runs=0)) == 5
    assert [r.id for r in store.runs("prod")] == recent[::-1]
    assert all(store.steps(r) == [] for r in old)  # their steps went with them
    assert store.steps(recent[0]) != []
    assert store.prune("prod", Retention(days=0, runs=2)) == 2
    assert [r.id for r in store.runs("prod")] == recent[:1:-1]
    assert store.prune("prod", Retention(days=0, runs=0)) == 0  # 0: no limit
    # The newest run of an environment stays whatever its age; other environments
    # are left to their own passes.
    store.db.execute("UPDATE runs SET started_at = 0, finished_at = 1")
    assert store.prune("prod", Retention(days=1, runs=1)) == 1
    assert [r.id for r in store.runs()] == [recent[-1], other]


def test_age_of_a_folded_run_is_its_last_look(store: Store) -> None:
    run = idle(store)
    store.db.execute("UPDATE runs SET started_at = 0, finished_at = 1")  # first look long ago
    idle(store)  # ... and one now
    changed(store)
    assert store.prune("prod", Retention(days=1, runs=0)) == 0
    assert run in [r.id for r in store.runs()]


OLD_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, environment TEXT NOT NULL,
    commit_id TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL,
    status TEXT NOT NULL, plan_json TEXT NOT NULL, summary TEXT NOT NULL DEFAULT '');
INSERT INTO runs VALUES (1, 'prod', 'c1', 10, 11, 'nothing-to-do', '{}', '0/0 steps ok');
"""


def test_a_database_of_an_earlier_version_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    store = Store(path)
    (run,) = store.runs()
    assert (run.looks, run.last_look_at) == (1, None)
    assert store.failures_of(1) == {}
    assert idle(store) == 1  # the old idle run takes the next idle look
    assert store.runs()[0].looks == 2
    store.close()
    Store(path).close()  # opening again changes nothing


def test_size_counts_the_file_and_its_log(store: Store) -> None:
    before = store.size()
    for _ in range(50):
        changed(store)
    after = store.size()
    assert after.runs == 50 and before.runs == 0
    assert after.bytes > before.bytes > 0
    assert after.path == str(store.path)
