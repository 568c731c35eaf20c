"""What commands share: reading a commit's desired state, and reporting an error."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.cli.options import Source
    from reconciler.desired.manifests import Manifests
    from reconciler.desired.source import RepoSpec, Snapshot
    from reconciler.model import DesiredState

T = TypeVar("T")
EXIT_CHANGES = 2  # changes pending (plan, --dry-run, diff --exit-code)


@dataclass
class Loaded:
    snapshot: Snapshot
    manifests: Manifests
    spec: RepoSpec
    git_dir: Path  # the reconciler's mirror the snapshot was read from

    @property
    def label(self) -> str:
        s = self.snapshot
        return f"commit {s.short}" + (f" ({s.summary})" if s.summary else "")


def load_source(src: Source) -> Loaded:
    """The manifests of the commit ``src`` names; a note on stderr when a local work
    tree has changes that are not read (only commits are)."""
    from reconciler.desired.manifests import load_manifests
    from reconciler.desired.source import (
        RepoSpec,
        open_repo,
        read_commit,
        resolve_rev,
        worktree_changes,
    )

    spec = RepoSpec(location=src.repo, branch=src.branch, subdir=src.subdir)
    git_repo, root = open_repo(spec)
    snapshot = read_commit(git_repo, root, resolve_rev(spec, src.rev))
    if src.rev is None and src.branch is None and worktree_changes(spec, snapshot):
        click.echo(
            f"note: uncommitted changes under {src.repo} are ignored; reading "
            f"commit {snapshot.short}",
            err=True,
        )
    return Loaded(snapshot, load_manifests(snapshot.files), spec, Path(git_repo.git_dir))


def pick_environment(manifests: Manifests, environment: str | None) -> str:
    names = manifests.environment_names()
    if environment:
        return environment
    if len(names) == 1:
        return names[0]
    raise ReconcilerError(
        f"the repository has several environments ({', '.join(names)}): choose one with --env"
    )


def load_desired(
    src: Source, state_dir: Path, instance: str | None, create: bool = False
) -> tuple[Loaded, DesiredState]:
    """The commit's desired state of the chosen environment, for the instance of
    ``state_dir`` (stored there first when ``create``: commands that change things)."""
    from dataclasses import replace

    from reconciler import instance as inst
    from reconciler.desired.manifests import resolve

    policy = src.load_policy(state_dir)
    loaded = load_source(src)
    env = pick_environment(loaded.manifests, src.environment)
    desired = resolve(loaded.manifests, env, loaded.snapshot.commit, policy)
    return loaded, replace(desired, instance=inst.resolve(state_dir, instance, create))


def or_fail(f: Callable[[], T]) -> T:
    """``f()``, or its ReconcilerError reported as ``fail`` does."""
    try:
        return f()
    except ReconcilerError as exc:
        fail(exc)


def fail(exc: ReconcilerError) -> NoReturn:
    """Print the error (escaped: see ``ReconcilerError.report``) and exit 1."""
    for line in exc.report():
        click.echo(line, err=True)
    sys.exit(1)
