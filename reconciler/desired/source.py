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
from pathlib import Path
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


def sync_repo(spec: RepoSpec, *, fetch: bool = True) -> tuple[Path, str]:
    """The reconciler's mirror of ``spec``'s repository (its git folder) and the
    manifests root in it, as ``open_repo`` gives them, without loading GitPython (slow
    to import; ``read_commit`` needs only the folder)."""
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
    return path, subdir


def open_repo(spec: RepoSpec, *, fetch: bool = True) -> tuple[git.Repo, str]:
    """The reconciler's mirror of ``spec``'s repository and the manifests root in it.

    Both a URL and a local path are read through a mirror under the cache folder
    (``reconciler.desired.mirror``), cloned on first use and fetched when ``fetch`` is true; git
    never runs in a local source except as upload-pack. Every git command run on the
    returned repository gets ``reconciler.desired.gitsafe``'s forced settings. Raises
    SourceError with the location when it is not a readable repository.
    """
    import git  # slow to import: only when a repository is read

    path, subdir = sync_repo(spec, fetch=fetch)
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


def read_commit(repo: git.Repo | Path, subdir: str, rev: str) -> Snapshot:
    """The manifest files under ``subdir`` at ``rev`` of ``repo`` (a repository, or its
    git folder). Raises SourceError if absent.

    Read with git's plumbing (three processes, every one with ``gitsafe``'s settings):
    ``cat-file`` for the commit, ``ls-tree`` for the files, ``cat-file --batch`` for
    the manifests' contents. Symbolic links are read as git stores them (their target's
    path); submodules are not files."""
    git_dir = repo if isinstance(repo, Path) else Path(repo.git_dir)
    commit, message = _read_commit_object(git_dir, rev)
    listing = gitsafe.run_git_bytes(
        ["ls-tree", "-r", "-z", f"{commit}:{subdir}" if subdir else commit], cwd=git_dir
    )
    if listing.returncode != 0:
        raise SourceError(f"folder {subdir!r} does not exist at commit {commit[:7]}")
    blobs: dict[str, str] = {}
    for entry in listing.stdout.split(b"\0"):
        meta, _, name = entry.partition(b"\t")
        fields = meta.split()
        if len(fields) == 3 and fields[1] == b"blob":
            blobs[name.decode("utf-8", "surrogateescape")] = fields[2].decode()
    names = manifest_files(blobs)
    contents = _read_blobs(git_dir, [blobs[n] for n in names])
    return Snapshot(
        commit=commit,
        files=tuple(zip(names, contents, strict=True)),
        summary=message.strip().split("\n")[0],
    )


def _read_commit_object(git_dir: Path, rev: str) -> tuple[str, str]:
    """(full commit id, message) of ``rev``; SourceError when it names no commit."""
    proc = gitsafe.run_git_bytes(
        ["cat-file", "--batch"], cwd=git_dir, stdin=f"{rev}^{{commit}}\n".encode()
    )
    header, _, body = proc.stdout.partition(b"\n")
    fields = header.split()
    if proc.returncode != 0 or len(fields) != 3 or fields[1] != b"commit":
        raise SourceError(f"unknown revision {rev!r} in {git_dir}")
    raw = body[: int(fields[2])]
    head, _, message = raw.partition(b"\n\n")
    encoding = "utf-8"
    for line in head.split(b"\n"):
        if line.startswith(b"encoding "):
            encoding = line.removeprefix(b"encoding ").decode("ascii", "replace").strip()
    try:
        text = message.decode(encoding, "replace")
    except LookupError:  # an encoding Python does not know
        text = message.decode("utf-8", "replace")
    return fields[0].decode(), text


def _read_blobs(git_dir: Path, ids: list[str]) -> list[bytes]:
    """The contents of the blobs ``ids``, in order (one ``cat-file --batch``)."""
    if not ids:
        return []
    proc = gitsafe.run_git_bytes(
        ["cat-file", "--batch"], cwd=git_dir, stdin="".join(f"{i}\n" for i in ids).encode()
    )
    out, pos, found = proc.stdout, 0, []
    for blob in ids:
        end = out.find(b"\n", pos)
        fields = out[pos:end].split() if end >= 0 else []
        if proc.returncode != 0 or len(fields) != 3 or fields[1] != b"blob":
            raise SourceError(f"cannot read blob {blob[:7]} in {git_dir}")
        size = int(fields[2])
        found.append(out[end + 1 : end + 1 + size])
        pos = end + 1 + size + 1  # the content is followed by a newline
    return found


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
