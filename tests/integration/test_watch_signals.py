"""`reconcile watch`: SIGTERM in the middle of a release switch, and signed commits.

Both drive the real CLI (`python -m reconciler watch`) against a local bare repository
of a scratch copy of sample-repo, with the real Docker engine and HAProxy (the `Watch`
helper of test_watch.py). Waits have deadlines; nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from deploy_support import Deployment, wait_for
from fault_support import assert_servers_point_at_containers
from repo_support import git
from test_watch import Watch, serving

from reconciler import identity

WEB = "services/web.yaml"


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client)
    yield d
    d.cleanup()


def release(dep: Deployment, revision: str) -> None:
    """Make web's only release ``revision`` in the work tree (not committed)."""
    f = dep.repo / WEB
    text, n = re.subn(r"(?m)^(\s*- revision: )v\d+$", rf"\g<1>{revision}", f.read_text())
    assert n == 1, text
    f.write_text(text)


def db_rows(dep: Deployment, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    path = dep.state / "history.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        db.close()


def runs_of(dep: Deployment, sha: str) -> list[str]:
    """Statuses of the runs of ``sha``, oldest first ([] before the watcher made any)."""
    return [r[0] for r in db_rows(dep, "SELECT status FROM runs WHERE commit_id = ? "
                                       "ORDER BY id", (sha,))]


def running_servers(dep: Deployment) -> set[str]:
    return {identity.server_name("local", c.name) for c in dep.containers()
            if c.status == "running"}


def metric(w: Watch, name: str) -> float | None:
    """The value of one sample (``name`` with its labels, as printed), None if absent."""
    for line in w.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


# --------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize(
    ("kind", "when"),
    [
        ("start-container", "after the first step (a new container started)"),
        ("configure-haproxy", "after the reload that added the new servers (both releases "
                              "in HAProxy, the old one about to drain)"),
        # While the old servers drain (one held by an SSE stream for the drain timeout):
        # the pass stops once the drain phase ends, the old servers still in HAProxy at
        # weight 0, their containers running. (The points after it, an old server out of
        # HAProxy with its container still running, last milliseconds now that the config
        # steps install configs checked ahead; kill -9 there is test_faults.py's.)
        ("drain-server", "while the old servers drain (an SSE stream holds one of them)"),
    ],
)
def test_sigterm_mid_switch_exits_0_and_leaves_haproxy_on_running_containers(
        dep: Deployment, kind: str, when: str) -> None:
    dep.edit("environments/staging.yaml", "replicas: 1", "replicas: 2", "2 web replicas")
    w = Watch(dep, drift=60.0)
    try:
        wait_for(lambda: "ok" in runs_of(dep, git(dep.repo, "rev-parse", "HEAD")),
                 timeout=90, what="the first deploy")
        wait_for(lambda: serving(dep, "revision=v1"), timeout=30, what="v1 served")

        release(dep, "v2")
        trigger = kind
        if kind == "drain-server":  # the drain lasts 3 s: SIGTERM lands inside it
            f = dep.repo / WEB
            f.write_text(f.read_text().replace("drain_timeout: 10s", "drain_timeout: 3s"))
            stream = urllib.request.urlopen(dep.url("/events"), timeout=60)
            stream.readline()  # the stream is open, on an old (v1) container
            trigger = "configure-haproxy"  # the step before the drains
        sha, _ = w.push("web v2")

        def started_run() -> int | None:
            rows = db_rows(dep, "SELECT r.id FROM runs r JOIN steps s "
                                "ON s.run_id = r.id WHERE r.commit_id = ? AND s.kind = ?",
                           (sha, trigger))
            return int(rows[0][0]) if rows else None

        deadline = time.monotonic() + 90
        while (run_id := started_run()) is None:  # a tight loop: steps can be quick
            assert time.monotonic() < deadline, f"no {trigger} step of the v2 pass"
            time.sleep(0.02)
        if kind == "drain-server":
            time.sleep(0.5)  # the drain phase is under way, held for 3 s
        status_then = db_rows(dep, "SELECT status FROM runs WHERE id = ?", (run_id,))[0][0]
        w.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert status_then == "running", (
            f"the pass was over ({status_then}) before SIGTERM could be sent {when}")
        code = w.proc.wait(timeout=45)
        took = time.monotonic() - t0
    finally:
        w.stop()
    print(f"\nSIGTERM {when}: exit {code} after {took:.2f}s")
    assert code == 0, w.logs()[-5:]
    assert took < 30, f"exit took {took:.1f}s after SIGTERM"

    # The pass stopped between steps and was closed in the history.
    steps_done = [r[0] for r in db_rows(dep, "SELECT kind FROM steps WHERE run_id = ? "
                                             "ORDER BY step", (run_id,))]
    status = db_rows(dep, "SELECT status FROM runs WHERE id = ?", (run_id,))[0][0]
    assert status == "stopped", (status, steps_done)
    events = w.logs()
    assert any(e.get("event") == "stop" for e in events)
    assert any(e.get("event") == "pass" and e.get("outcome") == "stopped" for e in events)

    # HAProxy points only at running containers (every server in any state, in its
    # runtime and its config file: a DOWN one left on a removed container too), and serves.
    stats = dep.haproxy.server_stats()
    assert any(s.status.startswith("UP") for s in stats), stats
    try:
        assert_servers_point_at_containers(dep, dep.client)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; steps done: {steps_done}") from None
    print(f"steps done: {', '.join(steps_done)}; HAProxy: "
          f"{', '.join(f'{s.server[6:]} {s.status}' for s in stats if s.backend == 'be_web')}")
    for _ in range(20):
        code_, body = dep.get("/")
        assert code_ == 200 and "revision=v" in body, (code_, body)
    if kind == "drain-server":
        assert steps_done[-2:] == ["drain-server"] * 2, steps_done
        stream.close()

    # A following apply converges, then nothing is left to do.
    code, out = dep.apply()
    assert code == 0, out
    code, again = dep.plan()
    assert code == 0 and again["actions"] == [], again
    assert dep.revisions("web") == ["v2", "v2"]
    assert all(c.status == "running" for c in dep.containers("web"))
    for _ in range(10):
        assert serving(dep, "revision=v2")
    stats = dep.haproxy.server_stats()
    assert [s.server for s in stats if s.status.startswith("UP")] == [s.server for s in stats]
    assert len(stats) == 3, stats  # 2 web + 1 api, all UP
    assert_servers_point_at_containers(dep, dep.client)


# --------------------------------------------------------------------------- signed


def tool(name: str, package: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} not found: the signed-commit tests need it to make signing keys "
                    f"(Debian package {package}; .ci/setup installs it)")
    return exe


def make_key(exe: str, path: Path) -> str:
    """A new ed25519 SSH key without passphrase at ``path``; its public key line."""
    subprocess.run([exe, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Keys:
    """Signing keys of one test: how to sign as the allowed key, as a stranger and in
    the other signature format, and what `reconcile watch` is given to check them."""

    allowed: tuple[str, ...]    # `git -c ...` options that sign with the allowed key
    stranger: tuple[str, ...]   # ... with a key of the same kind that is not allowed
    other: tuple[str, ...]      # ... in the other format, with a key the user running the
    #                             reconciler trusts elsewhere (own keyring, global config)
    watch_args: tuple[str, ...]
    watch_env: dict[str, str]
    stranger_says: str          # why git refuses the stranger's signature
    other_says: str


def ssh_signing(root: Path) -> tuple[tuple[str, ...], tuple[str, ...], Path, str]:
    """(allowed, stranger) signing options, the allowed signers file, and a public key
    line of the stranger's."""
    exe = tool("ssh-keygen", "openssh-client")
    root.mkdir()
    allowed_pub = make_key(exe, root / "allowed")
    stranger_pub = make_key(exe, root / "stranger")
    # ssh-keygen(1) ALLOWED SIGNERS: "principals [options] keytype base64-key"
    signers = root / "allowed_signers"
    keytype, b64 = allowed_pub.split()[:2]
    signers.write_text(f"t@t {keytype} {b64}\n")
    ssh = ("-c", "gpg.format=ssh", "-c", "commit.gpgsign=true")
    return ((*ssh, "-c", f"user.signingkey={root / 'allowed'}"),
            (*ssh, "-c", f"user.signingkey={root / 'stranger'}"), signers, stranger_pub)


def gpg(home: Path, *args: str) -> str:
    exe = tool("gpg", "gnupg")
    return subprocess.run([exe, "--homedir", str(home), "--batch", *args], check=True,
                          capture_output=True, text=True).stdout


def gpg_signing(tmp: Path) -> tuple[tuple[str, ...], tuple[str, ...], Path, Path]:
    """(allowed, stranger) signing options, a GnuPG home with the allowed public key
    only (the one `reconcile watch` gets), and the signing home with both secret keys."""
    signing = Path(tempfile.mkdtemp(prefix="gpg-"))  # short: gpg-agent's socket is in it
    allowed = tmp / "gpg-allowed"
    allowed.mkdir(mode=0o700)
    fprs = {}
    for who in ("allowed", "stranger"):
        gpg(signing, "--passphrase", "", "--quick-gen-key", f"{who} <{who}@t>", "ed25519",
            "sign", "never")
        colons = gpg(signing, "--with-colons", "--list-secret-keys", f"{who}@t")
        fprs[who] = next(line.split(":")[9] for line in colons.splitlines()
                         if line.startswith("fpr:"))
    public = tmp / "allowed.asc"
    public.write_text(gpg(signing, "--armor", "--export", fprs["allowed"]))
    gpg(allowed, "--import", str(public))
    # git runs gpg with the environment of the test's git helper: name the home in a
    # wrapper instead.
    program = tmp / "gpg-signing"
    program.write_text(f'#!/bin/sh\nexec {tool("gpg", "gnupg")} --homedir {signing} "$@"\n')
    program.chmod(0o755)
    pgp = ("-c", "gpg.format=openpgp", "-c", f"gpg.program={program}",
           "-c", "commit.gpgsign=true")
    return ((*pgp, "-c", f"user.signingkey={fprs['allowed']}"),
            (*pgp, "-c", f"user.signingkey={fprs['stranger']}"), allowed, signing)


@pytest.fixture(params=["ssh", "gpg"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Keys]:
    ssh_allowed, ssh_stranger, signers, stranger_pub = ssh_signing(tmp_path / "ssh")
    gpg_allowed, gpg_stranger, gpg_home, signing_home = gpg_signing(tmp_path)
    try:
        if request.param == "ssh":
            # The reconciler's user has a GnuPG keyring of its own, with the stranger's
            # key in it: a GPG-signed commit must not pass because of that.
            yield Keys(ssh_allowed, ssh_stranger, gpg_stranger,
                       ("--allowed-signers", str(signers)), {"GNUPGHOME": str(signing_home)},
                       "No principal matched", "gpg: Can't check signature: No public key")
        else:
            # ... and a global git config naming allowed SSH signers, the stranger
            # among them: an SSH-signed commit must not pass because of that.
            everyone = tmp_path / "ssh" / "everyone"
            everyone.write_text(f"t@t {' '.join(stranger_pub.split()[:2])}\n")
            config = tmp_path / "gitconfig"
            config.write_text(f"[gpg \"ssh\"]\n\tallowedSignersFile = {everyone}\n")
            yield Keys(gpg_allowed, gpg_stranger, ssh_stranger,
                       ("--gpg-home", str(gpg_home)), {"GIT_CONFIG_GLOBAL": str(config)},
                       "gpg: Can't check signature: No public key", "No principal matched")
    finally:
        for home in (signing_home, gpg_home):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                           capture_output=True, check=False)
        shutil.rmtree(signing_home, ignore_errors=True)


def test_require_signed_applies_only_commits_signed_by_an_allowed_key(
        dep: Deployment, keys: Keys) -> None:
    # a signed head: applied
    release(dep, "v2")
    git(dep.repo, "add", "-A")
    git(dep.repo, *keys.allowed, "commit", "-q", "-m", "web v2, signed")
    signed = git(dep.repo, "rev-parse", "HEAD")
    w = Watch(dep, "--require-signed", *keys.watch_args, drift=60.0, env=keys.watch_env)
    try:
        wait_for(lambda: "ok" in runs_of(dep, signed), timeout=90, what="the signed commit")
        wait_for(lambda: serving(dep, "revision=v2"), timeout=30, what="v2 served")
        wait_for(lambda: metric(w, f'reconcile_last_applied_commit_info{{commit="{signed}"}}')
                 == 1.0, timeout=30, what="the signed commit in the metrics")

        # an unsigned head, one signed by a key that is not allowed, and one signed in
        # the other format: rejected, reported once each, never applied; v2 keeps serving
        bad_heads = (("v3", "unsigned", ("-c", "commit.gpgsign=false"), "no signature"),
                     ("v1", "signed by a stranger", keys.stranger, keys.stranger_says),
                     ("v3", "signed in the other format", keys.other, keys.other_says))
        for rejected, (rev, how, cfg, says) in enumerate(bad_heads, 1):
            release(dep, rev)
            git(dep.repo, "add", "-A")
            git(dep.repo, *cfg, "commit", "-q", "-m", f"web {rev}, {how}")
            bad = git(dep.repo, "rev-parse", "HEAD")
            git(dep.repo, "push", "-q", "origin", "HEAD:main")

            def rejection(bad: str = bad) -> list[dict[str, object]]:
                return [e for e in w.logs()
                        if e.get("event") == "commit-rejected" and e.get("commit") == bad]

            event = wait_for(rejection, timeout=30, what=f"the {how} commit rejected")[0]
            assert f"commit {bad[:7]} is not signed by an allowed key: {says}" in str(
                event["message"]), event
            assert event["level"] == "error"
            wait_for(lambda n=rejected: metric(w, 'reconcile_failures_total{kind="signature"}')
                     == float(n), timeout=10, what="the signature failure counted")
            # The watcher reads the head again (twice at --poll 1) and still does nothing.
            seen = metric(w, "reconcile_last_seen_commit_timestamp_seconds") or 0.0
            deadline = time.monotonic() + 30
            while (metric(w, "reconcile_last_seen_commit_timestamp_seconds") or 0.0) \
                    < seen + 2.0:
                assert serving(dep, "revision=v2")
                assert time.monotonic() < deadline, "the watcher stopped reading the head"
                time.sleep(0.2)
            assert runs_of(dep, bad) == []
            assert dep.revisions("web") == ["v2"]
            assert serving(dep, "revision=v2")
            assert metric(
                w, f'reconcile_last_applied_commit_info{{commit="{signed}"}}') == 1.0
            assert len(rejection()) == 1

        # a signed commit on top: applied
        release(dep, "v1")
        git(dep.repo, "add", "-A")
        git(dep.repo, *keys.allowed, "commit", "-q", "-m", "web v1, signed")
        good = git(dep.repo, "rev-parse", "HEAD")
        git(dep.repo, "push", "-q", "origin", "HEAD:main")
        wait_for(lambda: "ok" in runs_of(dep, good), timeout=90, what="the signed commit on top")
        wait_for(lambda: serving(dep, "revision=v1"), timeout=30, what="v1 served")
        wait_for(lambda: metric(w, f'reconcile_last_applied_commit_info{{commit="{good}"}}')
                 == 1.0, timeout=30, what="the new signed commit in the metrics")
        assert dep.revisions("web") == ["v1"]
    finally:
        code = w.stop()
    assert code == 0
    rejections = [e for e in w.logs() if e.get("event") == "commit-rejected"]
    assert len(rejections) == 3, json.dumps(rejections, indent=1)
