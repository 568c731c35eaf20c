"""Every git command of the reconciler, with the settings that would run code forced.

A repository's own ``.git/config`` can make git run programs: ``core.fsmonitor`` on any
command that reads the index (``git status``), ``core.hooksPath`` for hooks,
``gpg.program`` / ``gpg.ssh.program`` when a signature is checked (a script that always
says "good signature" defeats ``--require-signed``). The reconciler reads repositories
owned by others (a mounted manifests repository), so none of that may be honoured:

- manifests are read from the reconciler's own mirror (``reconciler.desired.mirror``), whose
  config git wrote for us; the operator's repository is only ever read through
  ``git-upload-pack`` (clone/fetch/ls-remote), which git documents as safe to run in an
  untrusted repository;
- every git process gets ``FORCED`` through ``GIT_CONFIG_COUNT``/``KEY_n``/``VALUE_n``
  (git >= 2.31): command-line config, which wins over every config file.

Nothing here builds a shell string: commands are argument lists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

# Where the system's own binaries are; PATH of the reconciler's process is not consulted
# for the signature programs, so nothing earlier in PATH can stand in for them.
_SYSTEM_PATH = "/usr/bin:/bin:/usr/local/bin"


def _system(name: str) -> str:
    """The absolute path of the system binary ``name`` (the bare name if not installed:
    git then fails to run it, which fails the check, never passes it)."""
    return shutil.which(name, path=_SYSTEM_PATH) or f"/usr/bin/{name}"


@cache
def forced() -> tuple[tuple[str, str], ...]:
    """The settings forced on every git command (key, value), in the order given."""
    gpg = _system("gpg")
    return (
        ("core.fsmonitor", "false"),
        ("core.hooksPath", "/dev/null"),
        ("gpg.program", gpg),
        ("gpg.openpgp.program", gpg),  # the newer name of gpg.program: both, or one wins
        ("gpg.ssh.program", _system("ssh-keygen")),
        ("gpg.x509.program", _system("gpgsm")),
        # Only the operator's --allowed-signers may name SSH keys (it is given after this).
        ("gpg.ssh.allowedSignersFile", "/dev/null"),
    )


def git_env(
    extra: Sequence[tuple[str, str]] = (), base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a git process: ``base`` (default: this process's) with
    ``forced()`` and then ``extra`` appended as command-line config (so they win over
    every config file and over any ``GIT_CONFIG_*`` entries already in ``base``)."""
    env = dict(os.environ if base is None else base)
    try:
        n = int(env.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        n = 0
    for i, (key, value) in enumerate((*forced(), *extra), start=n):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
        n = i + 1
    env["GIT_CONFIG_COUNT"] = str(n)
    env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for a password on a terminal
    return env


def run_git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    extra: Sequence[tuple[str, str]] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``git ARGS`` with ``git_env`` (``env`` as its base); never raises for git's
    exit code (the caller reads ``returncode``), only when git cannot be run at all."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=git_env(extra, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_git_bytes(
    args: Sequence[str], *, cwd: Path, stdin: bytes = b"", timeout: float = 300.0
) -> subprocess.CompletedProcess[bytes]:
    """``run_git`` with bytes in (``stdin``) and out (file contents are not text)."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=git_env(),
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """git's complaint for a message: its first ``fatal:``/``error:`` line (the lines
    after it are advice), else its last line."""
    lines = [x.strip() for x in (proc.stderr or proc.stdout or "").strip().splitlines()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else f"git exited with {proc.returncode}"
