"""Run history and audit in SQLite: the one place the reconciler keeps its own data.

One database per state directory (``history.sqlite``). Each pass is a run (commit, plan,
status, times); each executed action a step (result, duration, detail); each failed
(environment, commit, service) a failure, so the same commit is not retried in a loop.
Nothing stored contains a secret value (plans and messages never hold one).

Bounded: a pass that did nothing (an idle look: ``nothing-to-do``, no step, no failure)
is folded into the environment's previous run when that was an idle look at the same
commit with the same plan (``looks`` counts them, ``last_look_at`` is the newest), so a
watcher looking every second adds no row while nothing changes. ``prune`` drops the runs
(and their steps) beyond a ``Retention``; the newest run of an environment always stays.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import statedir
from reconciler.model import Host, SshConnection

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    environment TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,          -- running, ok, failed, nothing-to-do
    plan_json TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    failures_json TEXT NOT NULL DEFAULT '{}',  -- service -> full message (health, log tail)
    looks INTEGER NOT NULL DEFAULT 1,  -- idle looks folded into this run (nothing-to-do)
    last_look_at REAL                  -- start of the newest of them; NULL for one look
);
CREATE INDEX IF NOT EXISTS runs_by_environment ON runs (environment, id);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    service TEXT,
    description TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,          -- ok, failed, skipped
    detail TEXT NOT NULL DEFAULT '',
    duration_s REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS failures (
    environment TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    service TEXT NOT NULL,
    message TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (environment, commit_id, service)
);
CREATE TABLE IF NOT EXISTS canaries (
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    state_json TEXT NOT NULL,
    PRIMARY KEY (environment, service)
);
CREATE TABLE IF NOT EXISTS app_hosts (
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    host_json TEXT NOT NULL,
    PRIMARY KEY (environment, name)
);
"""


# Columns added after the first release, with their definitions: a database made by an
# earlier version gets them on open (SQLite's ALTER TABLE only appends a column).
_ADDED_RUN_COLUMNS = {
    "failures_json": "TEXT NOT NULL DEFAULT '{}'",
    "looks": "INTEGER NOT NULL DEFAULT 1",
    "last_look_at": "REAL",
}


# The runs of environment :env beyond a Retention (:days, :cutoff, :runs; 0 = no limit),
# never its newest run, nor its newest run at a commit (the last applied commit, which
# reconciler.desired.lineage checks new heads against).
_PRUNED = """
SELECT id FROM runs
WHERE environment = :env
  AND id < (SELECT MAX(id) FROM runs WHERE environment = :env)
  AND id != COALESCE((SELECT MAX(id) FROM runs WHERE environment = :env
                      AND commit_id != '-'), -1)
  AND (
    (:days > 0 AND COALESCE(last_look_at, finished_at, started_at) < :cutoff)
    OR (:runs > 0 AND id <= (SELECT id FROM runs WHERE environment = :env
                             ORDER BY id DESC LIMIT 1 OFFSET :runs))
  )
"""


@dataclass(frozen=True)
class Retention:
    """How much history to keep, per environment: runs whose last activity is older than
    ``days``, and runs beyond the newest ``runs``, are deleted with their steps; 0 keeps
    them. The newest run of an environment is always kept (``status`` shows it)."""

    days: float = 30.0
    runs: int = 5000


@dataclass(frozen=True)
class HistorySize:
    path: str
    bytes: int  # the database file and its write-ahead log
    runs: int  # of every environment


@dataclass(frozen=True)
class Run:
    id: int
    environment: str
    commit: str
    started_at: float
    finished_at: float | None
    status: str
    summary: str
    looks: int = 1  # idle looks this run stands for
    last_look_at: float | None = None  # start of the newest of them (None: one look)


class Store:
    def __init__(self, path: Path) -> None:
        # 0600 before SQLite opens it: SQLite gives its -wal and -shm files the mode of
        # the database file, so none of them is ever readable by other users.
        statedir.private_file(path)
        for extra in ("-wal", "-shm"):
            statedir.tighten_existing(path.with_name(path.name + extra))
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.path = path
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(runs)")}
        for name, definition in _ADDED_RUN_COLUMNS.items():
            if name not in columns:  # a database made by an earlier version
                self.db.execute(f"ALTER TABLE runs ADD COLUMN {name} {definition}")

    @classmethod
    def read_only(cls, path: Path) -> Store:
        """The history at ``path`` opened for reading only, beside a writer in another
        thread or process (WAL: neither blocks the other): nothing is created or
        migrated. Raises sqlite3.Error when it cannot be opened."""
        store = cls.__new__(cls)
        store.db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5, isolation_level=None
        )
        store.path = path
        return store

    def close(self) -> None:
        self.db.close()

    def start_run(self, environment: str, commit: str, plan_json: str) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (environment, commit_id, started_at, status, plan_json) "
            "VALUES (?, ?, ?, 'running', ?)",
            (environment, commit, time.time(), plan_json),
        )
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str, failures: dict[str, str], summary: str) -> None:
        self.db.execute(
            "UPDATE runs SET finished_at = ?, status = ?, failures_json = ?, summary = ? "
            "WHERE id = ?",
            (time.time(), status, json.dumps(failures), summary, run_id),
        )

    def finish_idle(self, run_id: int, summary: str) -> int:
        """Close run ``run_id`` as an idle look (``nothing-to-do``, no step, no failure).

        When the environment's previous run was an idle look at the same commit with the
        same plan and summary, ``run_id`` is deleted and folded into it (``looks`` + 1,
        ``last_look_at`` = this look's start); its id is returned. Otherwise ``run_id``
        is closed as a run of its own and returned."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute(
                "SELECT environment, commit_id, started_at, plan_json FROM runs WHERE id = ?",
                (run_id,),
            ).fetchone()
            prev = None
            if row is not None:
                env, commit, started_at, plan = row
                prev = self.db.execute(
                    "SELECT id FROM runs WHERE environment = ? AND id < ? AND status = "
                    "'nothing-to-do' AND commit_id = ? AND plan_json = ? AND summary = ? "
                    "AND failures_json = '{}' AND id = (SELECT MAX(id) FROM runs "
                    "WHERE environment = ? AND id < ?)",
                    (env, run_id, commit, plan, summary, env, run_id),
                ).fetchone()
            if prev is None:
                self.db.execute(
                    "UPDATE runs SET finished_at = ?, status = 'nothing-to-do', "
                    "failures_json = '{}', summary = ? WHERE id = ?",
                    (time.time(), summary, run_id),
                )
                self.db.execute("COMMIT")
                return run_id
            self.db.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            self.db.execute(
                "UPDATE runs SET looks = looks + 1, last_look_at = ? WHERE id = ?",
                (started_at, prev[0]),
            )
            self.db.execute("COMMIT")
            return int(prev[0])
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def prune(self, environment: str, keep: Retention, now: float | None = None) -> int:
        """Delete the runs of ``environment`` beyond ``keep`` (and their steps); how many.

        A run's age is that of its last activity (its newest look, else its end, else
        its start). Failures (which hold services) and canary states are not touched."""
        now = time.time() if now is None else now
        args = {
            "env": environment,
            "days": keep.days,
            "cutoff": now - keep.days * 86400,
            "runs": keep.runs,
        }
        self.db.execute("BEGIN IMMEDIATE")
        try:
            ids = [(row[0],) for row in self.db.execute(_PRUNED, args).fetchall()]
            self.db.executemany("DELETE FROM steps WHERE run_id = ?", ids)
            self.db.executemany("DELETE FROM runs WHERE id = ?", ids)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(ids)

    def size(self) -> HistorySize:
        """How big the database is now (all environments)."""
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        size = sum(f.stat().st_size for f in files if f.exists())
        (runs,) = self.db.execute("SELECT COUNT(*) FROM runs").fetchone()
        return HistorySize(str(self.path), size, int(runs))

    def record_step(
        self,
        run_id: int,
        step: int,
        action: dict[str, Any],
        status: str,
        detail: str,
        duration_s: float,
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                step,
                action["kind"],
                action["host"],
                action.get("service"),
                action["description"],
                action["reason"],
                status,
                detail,
                duration_s,
            ),
        )

    def record_failure(self, environment: str, commit: str, service: str, message: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?)",
            (environment, commit, service, message, time.time()),
        )

    def last_commit(self, environment: str) -> str | None:
        """The commit of the environment's newest run: the last commit a pass (or an
        operator's rollback) moved it to; None before any. Manual records without a
        commit (``-``: canary decisions, retries) do not count. Pruning keeps the
        newest run, so this survives retention."""
        row = self.db.execute(
            "SELECT commit_id FROM runs WHERE environment = ? AND commit_id != '-' "
            "ORDER BY id DESC LIMIT 1",
            (environment,),
        ).fetchone()
        return str(row[0]) if row else None

    def failed_services(self, environment: str, commit: str) -> dict[str, str]:
        """Services whose apply failed at this commit -> message: not retried until a newer
        commit arrives or ``clear_failure`` (``reconcile retry``)."""
        rows = self.db.execute(
            "SELECT service, message FROM failures WHERE environment = ? AND commit_id = ?",
            (environment, commit),
        )
        return {service: message.split("\n")[0] for service, message in rows.fetchall()}

    def clear_failure(self, environment: str, service: str | None = None) -> int:
        if service is None:
            cur = self.db.execute("DELETE FROM failures WHERE environment = ?", (environment,))
        else:
            cur = self.db.execute(
                "DELETE FROM failures WHERE environment = ? AND service = ?", (environment, service)
            )
        return cur.rowcount

    def canaries(self, environment: str) -> dict[str, str]:
        """service -> the JSON state of its canary analysis (reconciler.canary.engine)."""
        rows = self.db.execute(
            "SELECT service, state_json FROM canaries WHERE environment = ?", (environment,)
        )
        return dict(rows.fetchall())

    def save_canary(self, environment: str, service: str, state_json: str | None) -> None:
        """Store a canary's state; None forgets it (the next pass starts it afresh)."""
        if state_json is None:
            self.db.execute(
                "DELETE FROM canaries WHERE environment = ? AND service = ?",
                (environment, service),
            )
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO canaries VALUES (?, ?, ?)",
                (environment, service, state_json),
            )

    def app_hosts(self, environment: str) -> list[Host]:
        """The app hosts this environment ran containers on (as of the last pass that
        recorded them), with how to reach them: a host later removed from the inventory
        can still be cleaned up."""
        rows = self.db.execute(
            "SELECT host_json FROM app_hosts WHERE environment = ? ORDER BY name", (environment,)
        )
        return [host_from_json(row[0]) for row in rows.fetchall()]

    def set_app_hosts(self, environment: str, hosts: Iterable[Host]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("DELETE FROM app_hosts WHERE environment = ?", (environment,))
        self.db.executemany(
            "INSERT INTO app_hosts VALUES (?, ?, ?)",
            [(environment, h.name, json.dumps(dataclasses.asdict(h))) for h in hosts],
        )
        self.db.execute("COMMIT")

    def runs(self, environment: str | None = None, limit: int = 20) -> list[Run]:
        sql = (
            "SELECT id, environment, commit_id, started_at, finished_at, status, summary, "
            "looks, last_look_at FROM runs"
        )
        args: tuple[Any, ...] = ()
        if environment:
            sql += " WHERE environment = ?"
            args = (environment,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [Run(*row) for row in rows]

    def steps(self, run_id: int) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT step, kind, host, service, description, reason, status, "
            "detail, duration_s FROM steps WHERE run_id = ? ORDER BY step",
            (run_id,),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def failures_of(self, run_id: int) -> dict[str, str]:
        row = self.db.execute("SELECT failures_json FROM runs WHERE id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def plan_of(self, run_id: int) -> dict[str, Any]:
        row = self.db.execute("SELECT plan_json FROM runs WHERE id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else {}


def host_from_json(text: str) -> Host:
    data = json.loads(text)
    ssh = data.get("ssh")
    return Host(
        name=data["name"],
        address=data["address"],
        roles=tuple(data["roles"]),
        ssh=SshConnection(**ssh) if ssh else None,
    )
