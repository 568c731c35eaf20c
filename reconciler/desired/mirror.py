"""The reconciler's own bare copy of a manifests repository (a URL or a local path).

Manifests are never read from the operator's repository itself: its ``.git/config``,
hooks and index belong to whoever owns it (see ``reconciler.desired.gitsafe``). It is cloned
once into a cache folder and fetched from; git then runs in the source only as
``git-upload-pack``, which is made to serve untrusted repositories. A local source owned
by another user passes git's ownership check because its exact path (never ``*``) is
declared safe for that upload-pack alone, in a config file made for the call.

The mirror holds the source's branches, tags and remote-tracking branches (pruned like
the source), and its ``HEAD`` is the commit the source's ``HEAD`` named at the last
fetch (detached; unborn when the source's is). Concurrent syncs of one mirror (a watcher
and an ``apply``) are serialised by a lock file beside it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from reconciler.desired.gitsafe import last_line, run_git
from reconciler.errors import SourceError

REFSPECS = (
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+refs/remotes/*:refs/remotes/*",
)
SOURCE_HEAD = "refs/reconciler/HEAD"  # the source's HEAD as of the last fetch
_NO_HEAD = "refs/reconciler/no-head"  # never created: HEAD pointing here is unborn


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _trust_env(safe: Sequence[str], scratch: Path) -> dict[str, str] | None:
    """An environment whose global git config declares exactly ``safe`` as safe
    directories (upload-pack honours safe.directory only from such a file; git clears
    command-line config before it runs upload-pack in a local source). None: no change."""
    if not safe:
        return None
    cfg = scratch / "gitconfig"
    cfg.write_text("".join(f"[safe]\n\tdirectory = {_quoted(p)}\n" for p in safe))
    return {**os.environ, "GIT_CONFIG_GLOBAL": str(cfg)}


def _quoted(value: str) -> str:
    """A git config value in double quotes (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sync(origin: str, path: Path, *, fetch: bool, safe: Sequence[str] = ()) -> None:
    """Make ``path`` a mirror of ``origin`` (clone if absent; fetch when ``fetch``).

    ``safe``: exact paths of a local source to declare safe for upload-pack (a
    repository owned by another user). Raises SourceError with git's message when the
    source cannot be read. The mirror is never half-made: a clone goes to a temporary
    folder first and is renamed into place.
    """
    with _locked(path), tempfile.TemporaryDirectory(prefix=".scratch-", dir=path.parent) as t:
        env = _trust_env(safe, Path(t))
        if not (path / "HEAD").exists():
            tmp = Path(t) / "mirror"
            proc = run_git(
                ["clone", "--quiet", "--mirror", "--no-local", "--", origin, str(tmp)], env=env
            )
            if proc.returncode != 0:
                raise SourceError(f"cannot fetch {origin}: {last_line(proc)}")
            _fetch(origin, tmp, env)
            if path.exists():  # a mirror left half-made by a killed process
                shutil.rmtree(path)
            tmp.rename(path)
        elif fetch:
            _fetch(origin, path, env)


def _fetch(origin: str, path: Path, env: dict[str, str] | None) -> None:
    # The source's HEAD (a work tree's checked-out branch or detached commit) is what
    # "HEAD" means to the user: fetched with the branches, in one fetch (one upload-pack).
    # A source whose HEAD is unborn (a bare repository whose HEAD names a branch never
    # pushed) fails that fetch: its refs are fetched alone, and the mirror's HEAD is left
    # unborn too.
    head = run_git(
        ["fetch", "--quiet", "--prune", "origin", *REFSPECS, f"+HEAD:{SOURCE_HEAD}"],
        cwd=path,
        env=env,
    )
    if head.returncode != 0:
        proc = run_git(["fetch", "--quiet", "--prune", "origin", *REFSPECS], cwd=path, env=env)
        if proc.returncode != 0:
            raise SourceError(f"cannot fetch {origin}: {last_line(proc)}")
    if head.returncode == 0:
        moved = run_git(["update-ref", "--no-deref", "HEAD", SOURCE_HEAD], cwd=path)
    else:
        run_git(["update-ref", "-d", SOURCE_HEAD], cwd=path)
        moved = run_git(["symbolic-ref", "HEAD", _NO_HEAD], cwd=path)
    if moved.returncode != 0:
        raise SourceError(f"cannot update the mirror {path}: {last_line(moved)}")


def remote_head(origin: str, ref: str, *, safe: Sequence[str] = ()) -> str:
    """The commit ``ref`` (``HEAD`` or ``refs/heads/<branch>``) names in ``origin`` now,
    asked through upload-pack (``git ls-remote``), as cheap as a poll can be. Raises
    SourceError when the source cannot be read or has no such ref."""
    with tempfile.TemporaryDirectory(prefix="reconciler-") as t:
        proc = run_git(["ls-remote", "--", origin, ref], env=_trust_env(safe, Path(t)), timeout=60)
    if proc.returncode != 0:
        raise SourceError(f"cannot reach {origin}: {last_line(proc)}")
    for line in proc.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    raise SourceError(f"{origin} has no {ref}")
