"""The branch ``reconcile watch`` follows: its head now, the reconciler's mirror of it,
signature checks of its commits, and file events that say a local head may have moved."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.desired.gitsafe import run_git
from reconciler.desired.mirror import remote_head
from reconciler.desired.source import RepoSpec, find_local, open_repo
from reconciler.errors import SourceError

if TYPE_CHECKING:
    import git


class BranchSource:
    """One followed branch (``spec``). Only the keys the operator named count for
    signatures: ``allowed_signers`` (SSH) and ``gpg_home`` (a GPG keyring)."""

    def __init__(
        self, spec: RepoSpec, allowed_signers: Path | None = None, gpg_home: Path | None = None
    ) -> None:
        self.spec = spec
        self.allowed_signers = allowed_signers
        self.gpg_home = gpg_home
        self._repo: git.Repo | None = None
        self._root = ""

    def repo(self) -> tuple[git.Repo, str]:
        """The reconciler's mirror of the followed repository, and the manifests root."""
        if self._repo is None:
            self._repo, self._root = open_repo(self.spec, fetch=False)
        return self._repo, self._root

    def _origin(self) -> tuple[str, tuple[str, ...]]:
        """Where to ask for the head (URL or a local repository's git dir) and the
        exact paths to declare safe for that (a local repository owned by another user)."""
        spec = self.spec
        if spec.is_remote:
            return spec.location, ()
        local = find_local(spec.location)
        return str(local.git_dir), tuple(str(p) for p in (local.git_dir, local.top) if p)

    def head(self) -> str:
        """The branch head now, asked with ``ls-remote`` (git runs in the source only as
        upload-pack); the mirror is fetched only when it does not have that commit."""
        import git

        spec = self.spec
        origin, safe = self._origin()
        ref = f"refs/heads/{spec.branch}" if spec.branch else "HEAD"
        sha = remote_head(origin, ref, safe=safe)
        repo, _ = self.repo()
        try:
            repo.commit(sha)
        except (ValueError, git.BadName):
            self._repo, self._root = open_repo(spec, fetch=True)
        return sha

    def verify_signature(self, sha: str) -> None:
        """Raise SourceError unless ``sha`` carries a good signature by an allowed key.

        git runs in the reconciler's mirror with ``reconciler.desired.gitsafe``'s settings
        forced: the system's gpg and ssh-keygen, and only the operator's allowed signers
        file (none: no SSH signature passes). Without ``gpg_home`` an empty keyring is
        used, so no GPG signature passes either: only the keys the operator named count.
        """
        import os
        import tempfile

        repo, _ = self.repo()
        extra = []
        if self.allowed_signers:
            extra.append(("gpg.ssh.allowedSignersFile", str(self.allowed_signers)))
        with tempfile.TemporaryDirectory(prefix="reconciler-gnupg-") as empty:
            home = str(self.gpg_home) if self.gpg_home else empty
            proc = run_git(
                ["verify-commit", sha],
                cwd=Path(repo.git_dir),
                extra=extra,
                env={**os.environ, "GNUPGHOME": home},
                timeout=30,
            )
        if proc.returncode != 0:
            why = (proc.stderr or proc.stdout).strip().splitlines()
            raise SourceError(
                f"commit {sha[:7]} is not signed by an allowed key: "
                f"{why[-1] if why else 'no signature'}"
            )

    def watch_files(self, wake: threading.Event) -> Any:
        """Set ``wake`` when refs of a local repository change (a push, a commit); the
        started watchdog observer (``stop()`` it), or None for a remote repository."""
        if self.spec.is_remote:
            return None
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        git_dir = find_local(self.spec.location).git_dir  # the source, not the mirror

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                # Reading a ref (as every check of the head does) is an event too; only
                # a change may wake the loop, or it would spin.
                if event.event_type not in ("opened", "closed_no_write"):
                    wake.set()

        observer = Observer()
        observer.schedule(Handler(), str(git_dir / "refs"), recursive=True)
        observer.schedule(Handler(), str(git_dir), recursive=False)  # HEAD, packed-refs
        observer.daemon = True
        observer.start()
        return observer
