"""What the status page shows, as the JSON of its endpoints (docs/status-page.md).

The page never observes anything itself: a ``PageView`` (the desired state, what was
observed, the held services, where the commit came from) is handed over by whoever
observed last (``reconcile watch`` after each pass, ``reconcile ui`` every few seconds),
and every request adds only what the history database holds now (canary states, runs).
That keeps a request cheap: one read-only SQLite open and pure assembly, no Docker or
HAProxy call. Service data comes from ``reconciler.present.status`` (one source for
``status`` and the page); this module only reshapes it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.canary.engine import CanaryState, effective_weights, overlay
from reconciler.model import DesiredState, ObservedState
from reconciler.present.status import status_data
from reconciler.records import query
from reconciler.records.store import FILENAME
from reconciler.store import Run, Store

HISTORY = "history.sqlite"
EMPTY_SERIES: dict[str, Any] = {"resolution_s": 10, "revisions": {}}


@dataclass(frozen=True)
class PageView:
    """One observation of the world, as a pass (or ``reconcile ui``) made it."""

    desired: DesiredState  # as git declares it (canary weights are laid over per request)
    observed: ObservedState
    held: Mapping[str, str] = field(default_factory=dict)
    git_dir: Path | None = None  # where the commit can be read (its author and time)
    observed_at: float = 0.0  # unix seconds
    error: str | None = None  # the last observation failed: why (the view is older)


class PageData:
    """The four endpoints' data for the state directory ``state_dir``.

    ``view`` returns the newest ``PageView`` (None before the first observation);
    ``environment`` names the environment before one exists. Thread-safe: each call
    opens its own read-only connection to the history (WAL: the writer is not blocked).
    """

    def __init__(
        self,
        state_dir: Path,
        view: Callable[[], PageView | None],
        environment: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.view = view
        self.environment = environment
        self._commits: dict[str, dict[str, Any] | None] = {}
        self._lock = threading.Lock()

    def _env(self, view: PageView | None) -> str | None:
        return view.desired.environment if view is not None else self.environment

    def overview(self) -> dict[str, Any]:
        """GET /api/overview (see the module doc and docs/status-page.md)."""
        view = self.view()
        if view is None:
            return {
                "environment": self.environment,
                "commit": None,
                "services": [],
                "observed_at": None,
                "error": "nothing observed yet",
            }
        with _history(self.state_dir) as store:
            env = view.desired.environment
            states = (
                {s: CanaryState.from_json(t) for s, t in store.canaries(env).items()}
                if store
                else {}
            )
            runs = store.runs(env, limit=1) if store else []
        return {
            "environment": view.desired.environment,
            "commit": self._commit(view),
            "services": services(view, states, runs[0] if runs else None),
            "observed_at": view.observed_at,
            "error": view.error,
        }

    def passes(self, limit: int) -> list[dict[str, Any]]:
        """GET /api/passes: the newest ``limit`` runs of the environment, newest first."""
        with _history(self.state_dir) as store:
            runs = store.runs(self._env(self.view()), limit) if store else []
        return [pass_data(r) for r in runs]

    def series(self, service: str, since_s: float) -> dict[str, Any]:
        """GET /api/series: ``reconciler.records.query.series`` over the last ``since_s``."""
        now = time.time()
        db = self.state_dir / FILENAME
        return query.series(db, service, now - since_s, now) if db.exists() else EMPTY_SERIES

    def actions(self, service: str, since_s: float) -> list[dict[str, Any]]:
        """GET /api/actions: ``reconciler.records.query.action_table`` since ``since_s`` ago."""
        db = self.state_dir / FILENAME
        return query.action_table(db, service, time.time() - since_s) if db.exists() else []

    def note(self) -> str | None:
        """Why series and actions are empty, when the records store is not there."""
        if not (self.state_dir / FILENAME).exists():
            return f"no request records yet ({self.state_dir / FILENAME} does not exist)"
        return None

    def _commit(self, view: PageView) -> dict[str, Any] | None:
        sha = view.desired.commit
        with self._lock:
            if sha not in self._commits:
                self._commits[sha] = commit_info(view.git_dir, sha)
            return self._commits[sha]


@contextmanager
def _history(state_dir: Path) -> Iterator[Store | None]:
    """The history database of ``state_dir`` opened read-only; None when there is none."""
    path = state_dir / HISTORY
    try:
        store = Store.read_only(path) if path.exists() else None
    except sqlite3.Error:
        store = None
    try:
        yield store
    finally:
        if store is not None:
            store.close()


def services(
    view: PageView, states: Mapping[str, CanaryState], last: Run | None
) -> list[dict[str, Any]]:
    """Each desired service: its releases (at their current canary weights), its
    containers with their HAProxy state, and its canary (``status_data`` reshaped)."""
    desired = overlay(view.desired, states)
    data = status_data(desired, view.observed, last, dict(view.held), "", states)
    out = []
    for svc, d in zip(desired.services, data["services"], strict=True):
        state = states.get(svc.name)
        out.append(
            {
                "name": svc.name,
                "held": d["held"],
                "releases": [
                    {"revision": r.revision, "weight": r.weight, "canary": r.canary is not None}
                    for r in svc.releases
                ],
                "containers": [
                    {
                        "host": c["host"],
                        "name": c["name"],
                        "revision": c["revision"],
                        "status": c["status"],
                        "health": c["health"],
                        "lb_state": c["haproxy"],
                        "weight": c["weight"],
                    }
                    for c in d["containers"]
                ],
                "canary": canary_data(d["canary"], state, effective_weights(svc, state)),
            }
        )
    return out


def canary_data(
    shown: dict[str, Any] | None, state: CanaryState | None, weights: dict[str, int] | None
) -> dict[str, Any] | None:
    """A service's canary as the page shows it: ``status``'s view plus its looks."""
    if shown is None:
        return None
    looks = getattr(state, "looks", None) if state is not None else None
    if looks is None and state is not None and state.updated_at:
        # A version whose CanaryState keeps no looks: the current one as the only point.
        looks = [
            {
                "t": state.updated_at,
                "evidence": state.evidence,
                "step": int(state.progress.get("step", 0)) + 1,
                "weights": weights or {},
            }
        ]
    return {
        "status": shown["status"],
        "step": shown.get("step"),
        "steps": shown["steps"],
        "baseline": shown["baseline"],
        "canary": shown["canary"],
        "weights": weights or {shown["baseline"]: 100, shown["canary"]: 0},
        "reason": shown["reason"],
        "evidence": shown.get("evidence", 1.0),
        "abort_at": shown.get("abort_at"),
        "looks": list(looks or []),
    }


def pass_data(run: Run) -> dict[str, Any]:
    """One run of the history as a point of the timeline."""
    kind = "decision" if run.commit == "-" else "look" if run.status == "nothing-to-do" else "pass"
    return {
        "id": run.id,
        "t": run.started_at,
        "finished": run.finished_at,
        "kind": kind,
        "outcome": run.status,
        "commit": None if run.commit == "-" else run.commit,
        "summary": run.summary,
        "looks": run.looks,
        "last_look_at": run.last_look_at,
    }


def commit_info(git_dir: Path | None, sha: str) -> dict[str, Any] | None:
    """The commit's id, time, author and subject read from ``git_dir``; only the id when
    it cannot be read there; None when there is no commit (a work tree)."""
    if sha in ("", "worktree"):
        return None
    info: dict[str, Any] = {"sha": sha, "time": None, "author": None, "subject": None}
    if git_dir is None:
        return info
    import git

    try:
        with git.Repo(git_dir) as repo:
            c = repo.commit(sha)
            info.update(
                time=float(c.committed_date), author=str(c.author.name), subject=str(c.summary)
            )
    except (git.GitError, ValueError, OSError):
        pass  # the id alone: the page still says which commit
    return info
