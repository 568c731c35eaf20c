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

from reconciler.desired import gitsafe
from reconciler.desired.manifests import manifest_files
from reconciler.errors import SourceError

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


@dataclass(frozen=True)
class LocalRepo:
    """A repository on this machine, found without running git in it."""

    git_dir: Path  # the repository (``.git`` of a work tree, or a bare repository)
    top: Path | None  # its work tree; None when bare
    inner: str  # the folder of ``--repo`` inside the work tree ("" at its top)


def find_local(location: str) -> LocalRepo:
    """The repository holding the path ``location`` (it or a parent folder).

    Only the file system is looked at (``.git`` folders and files, bare layouts): git is
    not run in a repository that may belong to someone else. Raises SourceError when the
    path does not exist or is in no repository."""
    path = Path(location).resolve()
    if not path.exists():
        raise SourceError(f"repository path {location!r} does not exist")
    for folder in (path, *path.parents):
        dotgit = folder / ".git"
        git_dir: Path | None = None
        if dotgit.is_dir():
            git_dir = dotgit
        elif dotgit.is_file():  # a linked work tree or submodule: "gitdir: <path>"
            text = dotgit.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                git_dir = (folder / text.removeprefix("gitdir:").strip()).resolve()
        if git_dir is not None:
            inner = path.relative_to(folder).as_posix()
            return LocalRepo(git_dir, folder, "" if inner == "." else inner)
        if _is_bare(folder):
            inner = path.relative_to(folder).as_posix()
            return LocalRepo(folder, None, "" if inner == "." else inner)
    raise SourceError(
        f"{location!r} is not inside a git repository "
        "(manifests are read from commits; use `git init` and commit them, "
        "or `validate --worktree` for files on disk)"
    )


def _is_bare(folder: Path) -> bool:
    return (
        (folder / "HEAD").is_file() and (folder / "objects").is_dir() and (folder / "refs").is_dir()
    )


def mirror_path(key: str) -> Path:
    return cache_root() / hashlib.sha256(key.encode()).hexdigest()[:16]


def open_repo(spec: RepoSpec, *, fetch: bool = True) -> tuple[git.Repo, str]:
    """The reconciler's mirror of ``spec``'s repository and the manifests root in it.

    Both a URL and a local path are read through a mirror under the cache folder
    (``reconciler.desired.mirror``), cloned on first use and fetched when ``fetch`` is true; git
    never runs in a local source except as upload-pack. Every git command run on the
    returned repository gets ``reconciler.desired.gitsafe``'s forced settings. Raises
    SourceError with the location when it is not a readable repository.
    """
    import git  # slow to import: only when a repository is read

    from reconciler.desired import mirror

    safe: tuple[str, ...] = ()
    if spec.is_remote:
        origin, subdir = spec.location, spec.subdir.strip("/")
        path = mirror_path(spec.location)  # the key of earlier versions: caches stay
    else:
        local = find_local(spec.location)
        origin = str(local.git_dir)
        subdir = "/".join(p for p in (local.inner, spec.subdir.strip("/")) if p and p != ".")
        safe = tuple(str(p) for p in (local.git_dir, local.top) if p is not None)
        path = mirror_path(f"local:{local.git_dir}")
    mirror.sync(origin, path, fetch=fetch, safe=safe)
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SourceError(f"the mirror {path} of {spec.location} is not a repository") from exc
    forced = gitsafe.git_env()
    repo.git.update_environment(**{k: v for k, v in forced.items() if k.startswith("GIT_")})
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
        raise SourceError(f"unknown revision {rev!r} in {repo.git_dir}") from exc
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


def worktree_changes(spec: RepoSpec, snapshot: Snapshot) -> bool:
    """True when the manifest files on disk under ``spec`` differ from ``snapshot`` (to
    warn the user); False for a URL or a bare repository.

    Compares the files themselves: no ``git status``, which would run the repository's
    ``core.fsmonitor`` and filters (programs of whoever owns it)."""
    if spec.is_remote:
        return False
    local = find_local(spec.location)
    if local.top is None:
        return False
    root = Path(spec.location).resolve() / spec.subdir.strip("/")
    try:
        on_disk = read_directory(str(root))
    except (SourceError, OSError):
        return True  # the folder is gone or unreadable: not what was committed
    return on_disk.files != snapshot.files


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
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git is never read
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
