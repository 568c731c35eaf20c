"""Commits only move forward: a new head must descend from the last applied commit.

Signed commits alone do not stop a rollback: resetting a branch to an older signed
commit (or pointing it at a signed commit of another branch) gives a head whose
signature is good. So a commit is applied to an environment only when it descends from
(or is) the last commit applied there, as the history database records it
(``Store.last_commit``). Going back is an operator's decision, taken explicitly
(``reconcile apply --allow-rollback``) and recorded in the history.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.desired.gitsafe import last_line, run_git
from reconciler.errors import SourceError


class RollbackRefused(SourceError):
    """The commit does not descend from the last commit applied to the environment."""


def descends(git_dir: Path, ancestor: str, commit: str) -> bool:
    """True when ``commit`` is ``ancestor`` or descends from it in the repository at
    ``git_dir``. False when it does not, or when ``ancestor`` is not in the repository
    at all (history rewritten, another repository): either way not a move forward.
    Raises SourceError when git cannot answer about ``commit`` itself."""
    if commit == ancestor:
        return True
    proc = run_git(["merge-base", "--is-ancestor", ancestor, commit], cwd=git_dir, timeout=60)
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    known = run_git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=git_dir, timeout=60)
    if known.returncode != 0:
        raise SourceError(f"cannot check the ancestry of commit {commit[:7]}: {last_line(proc)}")
    return False  # the last applied commit is not in this repository


def check_forward(git_dir: Path, environment: str, last: str | None, commit: str) -> None:
    """Raise RollbackRefused unless ``commit`` descends from ``last``, the last commit
    applied to ``environment`` (None: nothing applied yet, so anything goes)."""
    if last is None or descends(git_dir, last, commit):
        return
    raise RollbackRefused(
        f"commit {commit[:7]} does not descend from {last[:7]}, the last commit applied to "
        f"environment {environment}: the branch was reset to an older commit or to another "
        "branch (a rollback); refused. To roll back on purpose, run `reconcile apply "
        f"--allow-rollback --rev {commit[:12]}` (recorded in the history), or push a new "
        "commit (e.g. `git revert`) on top"
    )
