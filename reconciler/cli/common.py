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


Commit = tuple["Path", str, "Snapshot"]  # (mirror's git folder, manifests root, snapshot)


def read_source(src: Source) -> Commit:
    """Fetch the repository ``src`` names into its mirror and read the commit."""
    from reconciler.desired.source import RepoSpec, read_commit, resolve_rev, sync_repo

    spec = RepoSpec(location=src.repo, branch=src.branch, subdir=src.subdir)
    git_dir, root = sync_repo(spec)
    return git_dir, root, read_commit(git_dir, root, resolve_rev(spec, src.rev))


def read_source_meanwhile(src: Source) -> Callable[[], Commit]:
    """``read_source`` started in a thread: git fetches and reads (other processes, so
    the GIL is free) while the caller imports what its pass needs. The returned call
    waits for it and raises what it raised. Nothing is imported in the thread: what it
    runs is imported here first."""
    from concurrent.futures import ThreadPoolExecutor

    import reconciler.desired.mirror
    import reconciler.desired.source  # noqa: F401 - both before the thread (see above)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-source")
    future = pool.submit(read_source, src)
    pool.shutdown(wait=False)
    return future.result


def load_source(
    src: Source, state_dir: Path | None = None, read: Callable[[], Commit] | None = None
) -> Loaded:
    """The manifests of the commit ``src`` names (read by ``read``, default
    ``read_source``); a note on stderr when a local work tree has changes that are not
    read (only commits are). With ``state_dir``, files that passed the schema check in
    an earlier pass are not checked again (its ``schema-memo``:
    ``reconciler.desired.schemamemo``)."""
    from reconciler.desired.manifests import load_manifests
    from reconciler.desired.schemamemo import SchemaMemo
    from reconciler.desired.source import RepoSpec, worktree_changes

    spec = RepoSpec(location=src.repo, branch=src.branch, subdir=src.subdir)
    git_dir, _, snapshot = read() if read is not None else read_source(src)
    if src.rev is None and src.branch is None and worktree_changes(spec, snapshot):
        click.echo(
            f"note: uncommitted changes under {src.repo} are ignored; reading "
            f"commit {snapshot.short}",
            err=True,
        )
    memo = SchemaMemo.in_state_dir(state_dir) if state_dir is not None else None
    manifests = load_manifests(snapshot.files, memo)
    if memo is not None:
        memo.save()
    return Loaded(snapshot, manifests, spec, git_dir)


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
    src: Source,
    state_dir: Path,
    instance: str | None,
    create: bool = False,
    read: Callable[[], Commit] | None = None,
) -> tuple[Loaded, DesiredState]:
    """The commit's desired state of the chosen environment, for the instance of
    ``state_dir`` (stored there first when ``create``: commands that change things).
    ``read``: see ``load_source``."""
    from dataclasses import replace

    from reconciler import instance as inst
    from reconciler.desired.manifests import resolve

    policy = src.load_policy(state_dir)
    loaded = load_source(src, state_dir, read)
    env = pick_environment(loaded.manifests, src.environment)
    desired = resolve(loaded.manifests, env, loaded.snapshot.commit, policy)
    return loaded, replace(desired, instance=inst.resolve(state_dir, instance, create))


def or_fail(f: Callable[[], T]) -> T:
    """``f()``, or its ReconcilerError reported as ``fail`` does."""
    try:
        return f()
    except ReconcilerError as exc:
        fail(exc)


# Set by the `reconcile` executable (``reconciler.cli.entry``), never in-process (tests,
# click's runner): a one-shot command may then end at once (``exit_now``).
QUICK_EXIT = False


def exit_now(code: int) -> NoReturn:
    """End a one-shot command (``apply``) with ``code``. From the `reconcile` executable
    the process ends at once once its output and logs are flushed (``os._exit``): the
    interpreter's teardown (modules, idle pool threads) would add 40-60 ms to every
    apply, and nothing is left to it (the pass closed its history, the lock and its
    connections). In-process (``QUICK_EXIT`` unset): ``sys.exit``."""
    if QUICK_EXIT:
        import logging
        import os

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                code = code or 1  # the output did not get out: not a success
        os._exit(code)
    sys.exit(code)


def fail(exc: ReconcilerError) -> NoReturn:
    """Print the error (escaped: see ``ReconcilerError.report``) and exit 1."""
    for line in exc.report():
        click.echo(line, err=True)
    sys.exit(1)
