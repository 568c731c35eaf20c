"""Scratch git repositories made from sample-repo, for CLI tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample-repo"


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                         text=True, env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                         "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                                         "PATH": "/usr/bin:/bin"})
    return out.stdout.strip()


def scratch_repo(tmp: Path, rename_env: dict[str, str] | None = None) -> Path:
    """A git repository holding a copy of sample-repo's manifests, committed once."""
    repo = tmp / "manifests"
    shutil.copytree(SAMPLE, repo, ignore=shutil.ignore_patterns("app"))
    for old, new in (rename_env or {}).items():
        f = repo / "environments" / f"{old}.yaml"
        f.write_text(f.read_text().replace(f"name: {old}", f"name: {new}"))
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "initial manifests")
    return repo


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def edit(repo: Path, rel: str, old: str, new: str) -> None:
    f = repo / rel
    text = f.read_text()
    assert old in text, f"{old!r} not in {rel}"
    f.write_text(text.replace(old, new, 1))
