"""A manifests repository's own git config must never run code (issue 17, item 2).

Each test performs the attack against the real git: a repository whose `.git/config`
names programs (`core.fsmonitor`, `core.hooksPath`, `gpg.program`, `gpg.ssh.program`)
that write a marker file or always report a good signature. The reconciler reads the
repository (validate, plan, the watcher's signature check) and the marker must not
appear, and a garbage signature must not pass `--require-signed`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from repo_support import git, scratch_repo

from reconciler.cli import main
from reconciler.desired.source import RepoSpec
from reconciler.errors import SourceError
from reconciler.watch import WatchConfig, Watcher


@pytest.fixture(autouse=True)
def cache(tmp_path: Path) -> Iterator[None]:
    """A cache folder of this test's own (the reconciler's mirrors go there)."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


def hostile_program(path: Path, marker: Path, stdout: str = "") -> str:
    """An executable that creates ``marker`` (and prints ``stdout``); its path."""
    path.write_text(f"#!/bin/sh\ntouch '{marker}'\ncat <<'EOF'\n{stdout}EOF\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout + r.stderr


@pytest.mark.parametrize("owner", ["root", "another user"])
def test_repository_config_never_runs_code_in_validate_and_plan(
        tmp_path: Path, owner: str) -> None:
    repo = scratch_repo(tmp_path)
    marker = tmp_path / "MARKER"
    evil = hostile_program(tmp_path / "evil.sh", marker)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in ("post-checkout", "reference-transaction", "post-index-change"):
        hostile_program(hooks / hook, marker)
    git(repo, "config", "core.fsmonitor", evil)
    git(repo, "config", "core.hooksPath", str(hooks))
    # an uncommitted change: the old code ran `git status` (and so the fsmonitor) to say so
    web = repo / "services" / "web.yaml"
    web.write_text(web.read_text() + "\n# not committed\n")
    if owner != "root":
        # A mounted repository owned by someone else (as in the image): readable without
        # trusting every repository (`safe.directory '*'`), and still never run.
        subprocess.run(["chown", "-R", "4242:4242", str(repo)], check=True)
    state = tmp_path / "state"

    code, out = run("validate", "--repo", str(repo))
    assert code == 0, out
    assert "uncommitted changes" in out, out  # said without running git in the repository
    assert not marker.exists(), "validate ran a program named by the repository's config"

    code, out = run("plan", "--repo", str(repo), "--env", "staging", "--state-dir", str(state))
    assert code in (0, 2), out
    assert not marker.exists(), "plan ran a program named by the repository's config"


GARBAGE = {
    "gpg": "-----BEGIN PGP SIGNATURE-----\n\n iQEzBAABCAAdFiEEgarbagegarbage\n =abcd\n"
           " -----END PGP SIGNATURE-----",
    "ssh": "-----BEGIN SSH SIGNATURE-----\n U1NIU0lHgarbagegarbage\n"
           " -----END SSH SIGNATURE-----",
}
# What the real programs print for a good signature; git believes it when exit is 0.
GOOD = {
    "gpg": "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 0123456789ABCDEF attacker\n"
           "[GNUPG:] VALIDSIG 0123456789ABCDEF0123456789ABCDEF01234567 2024-01-01 0 4 0 1 "
           "8 00 0123456789ABCDEF0123456789ABCDEF01234567\n[GNUPG:] TRUST_ULTIMATE 0 pgp\n",
    "ssh": 'Good "git" signature for t@t with ED25519 key SHA256:garbage\n',
}


def garbage_signed_commit(repo: Path, kind: str) -> str:
    """A commit object with a garbage ``gpgsig`` header on top of HEAD; its id."""
    head = git(repo, "rev-parse", "HEAD")
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    body = (f"tree {tree}\nparent {head}\nauthor t <t@t> 1700000000 +0000\n"
            f"committer t <t@t> 1700000000 +0000\ngpgsig {GARBAGE[kind]}\n\nforged\n")
    sha = subprocess.run(["git", "-C", str(repo), "hash-object", "-t", "commit", "-w",
                          "--stdin"], input=body, text=True, capture_output=True,
                         check=True).stdout.strip()
    git(repo, "update-ref", "refs/heads/main", sha)
    return sha


@pytest.mark.parametrize("kind", ["gpg", "ssh"])
def test_repository_signature_program_cannot_pass_require_signed(
        tmp_path: Path, kind: str) -> None:
    repo = scratch_repo(tmp_path)
    marker = tmp_path / "MARKER"
    fake = hostile_program(tmp_path / f"fake-{kind}", marker, GOOD[kind])
    git(repo, "config", "gpg.program" if kind == "gpg" else "gpg.ssh.program", fake)
    signers = tmp_path / "allowed_signers"
    signers.write_text("t@t ssh-ed25519 "
                       "AAAAC3NzaC1lZDI1NTE5AAAAIGarbageGarbageGarbageGarbageGarbageGarbage00\n")
    forged = garbage_signed_commit(repo, kind)
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    cfg = WatchConfig(spec=RepoSpec(str(repo), branch="main"), environment="staging",
                      state_dir=tmp_path / "state", require_signed=True,
                      gpg_home=gnupg if kind == "gpg" else None,
                      allowed_signers=signers if kind == "ssh" else None)
    watcher = Watcher(cfg)
    watcher.source.head()  # as the loop does: the head is read (and fetched) first
    with pytest.raises(SourceError, match="not signed by an allowed key"):
        watcher.source.verify_signature(forged)
    assert not marker.exists(), f"the repository's {kind} program ran"
