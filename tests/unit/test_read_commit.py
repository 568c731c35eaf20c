"""``read_commit`` reads a commit with git's plumbing: the same files, bytes, commit id
and summary as GitPython reads; a folder, a symbolic link, a submodule-free tree, a
non-UTF-8 message and the errors (unknown revision, missing folder)."""

from __future__ import annotations

import os
from pathlib import Path

import git as gitpython
import pytest
from repo_support import commit, git

from reconciler.desired.source import read_commit
from reconciler.errors import SourceError


def _gitpython_files(repo: Path, subdir: str, rev: str) -> dict[str, bytes]:
    """What the former GitPython reader returned: every blob under ``subdir``."""
    with gitpython.Repo(repo) as r:
        tree = r.commit(rev).tree
        if subdir:
            tree = tree / subdir
        return {
            str(Path(b.path).relative_to(subdir or ".")): b.data_stream.read()
            for b in tree.traverse()
            if isinstance(b, gitpython.Blob)
        }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "r"
    (r / "m" / "services").mkdir(parents=True)
    (r / "m" / "services" / "a.yaml").write_bytes(b"name: a\n\xff raw bytes\n")
    (r / "m" / "b.yml").write_text("name: b\n")
    (r / "m" / ".hidden").mkdir()
    (r / "m" / ".hidden" / "c.yaml").write_text("hidden\n")
    (r / "m" / "notes.txt").write_text("not a manifest\n")
    (r / "top.yaml").write_text("top\n")
    os.symlink("b.yml", r / "m" / "link.yaml")
    git(r, "init", "-q", "-b", "main")
    commit(r, "first line\n\nbody")
    return r


@pytest.mark.parametrize("subdir", ["", "m", "m/services"])
def test_same_files_as_gitpython(repo: Path, subdir: str) -> None:
    snap = read_commit(repo / ".git", subdir, "HEAD")
    theirs = _gitpython_files(repo, subdir, "HEAD")
    assert dict(snap.files) == {n: theirs[n] for n in dict(snap.files)}
    assert [n for n, _ in snap.files] == sorted(
        n for n in theirs if n.endswith((".yaml", ".yml")) and ".hidden" not in n
    )
    assert snap.commit == git(repo, "rev-parse", "HEAD")
    assert snap.summary == "first line"


def test_link_is_read_as_its_target_path(repo: Path) -> None:
    files = dict(read_commit(repo / ".git", "m", "HEAD").files)
    assert files["link.yaml"] == b"b.yml"
    assert files["services/a.yaml"] == b"name: a\n\xff raw bytes\n"


def test_older_revision_and_encoding(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD")
    (repo / "m" / "b.yml").write_text("name: b2\n")
    msg = repo.parent / "msg"
    msg.write_bytes("caf\u00e9\n".encode("latin-1"))  # stored as such, header "encoding"
    git(repo, "-c", "i18n.commitEncoding=ISO-8859-1", "commit", "-qa", "-F", str(msg))
    assert dict(read_commit(repo / ".git", "m", first).files)["b.yml"] == b"name: b\n"
    head = read_commit(repo / ".git", "m", "main")
    assert dict(head.files)["b.yml"] == b"name: b2\n"
    assert head.summary == "caf\u00e9"


def test_errors_name_the_revision_and_folder(repo: Path) -> None:
    with pytest.raises(SourceError, match="unknown revision 'nope'"):
        read_commit(repo / ".git", "", "nope")
    with pytest.raises(SourceError, match="folder 'absent' does not exist"):
        read_commit(repo / ".git", "absent", "HEAD")
