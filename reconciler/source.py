"""Where manifests come from: a commit of a git repository (never its working tree).

A repository is a local path (the repository itself, or a folder inside its work tree,
which then is the manifests root) or a URL, mirrored into a cache folder and fetched.
``read_commit`` returns the manifest files of one commit as bytes, with the full commit id.
``read_directory`` reads files on disk, for ``validate --worktree`` (pre-commit hooks) only.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from reconciler.errors import SourceError
from reconciler.manifests import manifest_files

if TYPE_CHECKING:
    import git

_URL = re.compile(r"^([a-z][a-z0-9+.-]*://|[^/\s]+@[^/\s:]+:)", re.IGNORECASE)
_SAFE_REV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./@{}^~-]{0,199}$")


@dataclass(frozen=True)
class Snapshot:
    """Manifest files of one commit, paths relative to the manifests root."""

    commit: str  # full commit id, or "worktree"
    files: tuple[tuple[str, bytes], ...]
    summary: str = ""  # the commit's first message line
    skipped: tuple[str, ...] = ()  # symbolic links not read (read_directory)

    @property
    def short(self) -> str:
        return self.commit[:7] if self.commit != "worktree" else "worktree"


@dataclass(frozen=True)
class RepoSpec:
    """``location``: path or URL; ``subdir``: manifests root inside the repository."""

    location: str
    branch: str | None = None
    subdir: str = ""

    @property
    def is_remote(self) -> bool:
        return bool(_URL.match(self.location))


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reconciler" / "repos"


def open_repo(spec: RepoSpec, *, fetch: bool = True) -> tuple[git.Repo, str]:
    """The git repository of ``spec`` and the manifests root inside it.

    A remote is mirrored under the cache folder and fetched when ``fetch`` is true.
    Raises SourceError with the location when it is not a readable repository.
    """
    import git  # slow to import: only when a repository is read

    if spec.is_remote:
        key = hashlib.sha256(spec.location.encode()).hexdigest()[:16]
        path = cache_root() / key
        try:
            if not (path / "HEAD").exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                repo = git.Repo.clone_from(spec.location, path, mirror=True)
            else:
                repo = git.Repo(path)
                if fetch:
                    repo.git.fetch("--prune", "origin")
        except git.GitCommandError as exc:
            raise SourceError(f"cannot fetch {spec.location}: {exc.stderr.strip()}") from exc
        return repo, spec.subdir.strip("/")
    path = Path(spec.location).resolve()
    if not path.exists():
        raise SourceError(f"repository path {spec.location!r} does not exist")
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SourceError(
            f"{spec.location!r} is not inside a git repository "
            "(manifests are read from commits; use `git init` and commit them, "
            "or `validate --worktree` for files on disk)"
        ) from exc
    top = Path(repo.working_tree_dir or repo.git_dir).resolve()
    inner = path.relative_to(top).as_posix() if path != top else ""
    subdir = "/".join(p for p in (inner, spec.subdir.strip("/")) if p and p != ".")
    return repo, subdir


def resolve_rev(spec: RepoSpec, rev: str | None) -> str:
    """The revision to read: ``rev``, else the branch, else HEAD."""
    chosen = rev or spec.branch or "HEAD"
    if not _SAFE_REV.fullmatch(chosen):  # fullmatch: "$" would allow a final newline
        raise SourceError(f"invalid revision {chosen!r}")
    return chosen


def read_commit(repo: git.Repo, subdir: str, rev: str) -> Snapshot:
    """The manifest files under ``subdir`` at ``rev``. Raises SourceError if absent."""
    import git

    try:
        commit = repo.commit(rev)
    except (git.BadName, ValueError, git.GitCommandError) as exc:
        # Ask git itself why: "dubious ownership" (a repository owned by another user)
        # must not read as an unknown revision.
        try:
            repo.git.rev_parse("--verify", f"{rev}^{{commit}}")
            why = ""
        except git.GitCommandError as probe:
            why = str(probe.stderr).strip().removeprefix("stderr: ").strip("'\n ")
        detail = f": {why}" if why and "dubious ownership" in why else ""
        raise SourceError(f"unknown revision {rev!r} in {repo.git_dir}{detail}") from exc
    tree = commit.tree
    if subdir:
        try:
            tree = tree / subdir
        except KeyError as exc:
            raise SourceError(
                f"folder {subdir!r} does not exist at commit {commit.hexsha[:7]}"
            ) from exc
    blobs: dict[str, git.Blob] = {}
    for item in tree.traverse():
        if isinstance(item, git.Blob):
            blobs[str(PurePosixPath(item.path).relative_to(subdir or "."))] = item
    names = manifest_files(blobs)
    files = tuple((n, blobs[n].data_stream.read()) for n in names)
    message = commit.message if isinstance(commit.message, str) else commit.message.decode()
    return Snapshot(commit=commit.hexsha, files=files, summary=message.strip().split("\n")[0])


def worktree_changes(repo: git.Repo, subdir: str) -> bool:
    """True when the working tree differs from HEAD under ``subdir`` (to warn the user)."""
    if repo.bare:
        return False
    return bool(repo.git.status("--porcelain", "--", subdir or "."))


def read_directory(path: str) -> Snapshot:
    """Manifest files on disk under ``path`` (no git); for validation before a commit.

    Symbolic links are skipped, files and folders alike (``skipped`` names them): a link
    could lead anywhere on the machine, and error messages quote what they read (a link
    ``x.yaml -> /etc/shadow`` would print its lines). git stores a link as its target's
    path, never the target's content, so a commit cannot hold what a link points at
    either. Files are opened with O_NOFOLLOW, so one swapped for a link meanwhile is
    not followed."""
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"{path!r} is not a folder")
    found: list[str] = []
    skipped: list[str] = []
    for folder, dirs, files in os.walk(root):  # does not descend into linked folders
        here = Path(folder)
        for name in [*dirs, *files]:
            rel = (here / name).relative_to(root).as_posix()
            if (here / name).is_symlink():
                skipped.append(rel)
            elif name in files:
                found.append(rel)
    names = manifest_files(found)
    return Snapshot(
        commit="worktree",
        files=tuple((n, _read_nofollow(root / n)) for n in names),
        skipped=tuple(sorted(skipped)),
    )


def _read_nofollow(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()
