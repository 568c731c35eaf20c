"""Issue 17: the trust boundary, attacked for real (docs/security.md).

Each test is an attack a manifest writer (or a local user) could make, run against the
real Docker engine, real files and real git through the CLI: a bind mount of the host's
root and Docker socket, a `file:` secret outside the secrets directory or through a
symbolic link, an `env:` secret of another environment, an SSH host that is trusted on
first use, secrets in the history and output, a world-readable state dir, guessable
label digests, `validate --worktree` reading through a link, and planted links at the
temporary names of HAProxy's files. The operator policy is given the way the old code
would ignore it (RECONCILE_POLICY), so each attack also runs, and fails the test, there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import paramiko
import pytest
from click.testing import CliRunner
from deploy_support import Deployment
from repo_support import commit

from reconciler import identity
from reconciler.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    monkeypatch.setenv("STAGING_DB_PASSWORD", "not-a-real-password")
    d = Deployment(tmp_path, docker_client)
    yield d
    d.cleanup()


def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    monkeypatch.setenv("RECONCILE_POLICY", str(path))
    return path


def line_of(repo: Path, rel: str, needle: str) -> int:
    lines = (repo / rel).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


# --------------------------------------------------------------------------- item 1


def test_bind_mount_of_root_and_docker_socket_is_refused(dep: Deployment) -> None:
    """A commit mounts / and the Docker socket read-write into web: refused before
    any container starts, each with file:line and the value."""
    web = dep.repo / "services/web.yaml"
    web.write_text(web.read_text() + "volumes:\n"
                   "  - {type: bind, source: /, target: /host}\n"
                   "  - {type: bind, source: /var/run/docker.sock, target: /var/run/docker.sock}\n")
    commit(dep.repo, "mount the host")
    code, out = dep.apply()
    root_line = line_of(dep.repo, "services/web.yaml", "source: /,")
    sock_line = line_of(dep.repo, "services/web.yaml", "docker.sock")
    assert code == 1, out
    assert not dep.containers(), [c.name for c in dep.containers()]  # nothing started
    assert f"services/web.yaml:{root_line}:" in out and "volumes[0].source: '/'" in out, out
    assert f"services/web.yaml:{sock_line}:" in out, out
    assert "volumes[1].source: '/var/run/docker.sock'" in out and "never allows" in out, out


def test_file_secret_outside_its_directory_or_through_a_link_is_refused(
    dep: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`file: /etc/shadow` is a validation error; a link inside the secrets directory
    pointing out of it is refused when read, and its target never reaches a container."""
    secrets = tmp_path / "secrets" / dep.env
    secrets.mkdir(parents=True)
    policy(tmp_path, monkeypatch,
           f"secrets:\n  directory: {tmp_path}/secrets/{{environment}}\n"
           "  env_prefix: STAGING_\n")
    staging = "environments/staging.yaml"  # declares the deployment's environment
    dep.edit(staging, "env: STAGING_DB_PASSWORD", "file: /etc/shadow", "read shadow")
    code, out = dep.apply()
    line = line_of(dep.repo, staging, "file: /etc/shadow")
    assert code == 1, out
    assert f"{staging}:{line}:" in out and "secrets.DB_PASSWORD.file: '/etc/shadow'" in out, out
    assert "outside the secrets directory" in out, out
    assert not dep.containers("api")

    victim = tmp_path / "victim.txt"
    victim.write_text("only-root-may-read-this-" + uuid.uuid4().hex)
    (secrets / "db").symlink_to(victim)
    dep.edit(staging, "file: /etc/shadow", f"file: {secrets}/db", "through a link")
    code, out = dep.apply()
    assert code == 1, out
    assert "symbolic link" in out and victim.read_text() not in out, out
    for c in dep.containers("api"):
        assert not any(victim.read_text() in e for e in c.attrs["Config"]["Env"]), c.name
    assert dep.get("/")[0] == 200  # web still served: only api failed

    (secrets / "db").unlink()
    (secrets / "db").write_text("the-real-one\n")
    dep.cli("retry", "api", repo=False)  # held at this commit since it failed
    code, out = dep.apply()
    assert code == 0, out
    [api] = dep.containers("api")
    assert "DB_PASSWORD=the-real-one" in api.attrs["Config"]["Env"]


def test_env_secret_of_another_environment_is_refused(
    dep: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging manifest names production's variable: refused at its line; the value
    reaches no container."""
    value = "production-password-" + uuid.uuid4().hex
    monkeypatch.setenv("PRODUCTION_DB_PASSWORD", value)
    staging = "environments/staging.yaml"
    dep.edit(staging, "env: STAGING_DB_PASSWORD", "env: PRODUCTION_DB_PASSWORD", "steal prod")
    code, out = dep.apply()
    line = line_of(dep.repo, staging, "PRODUCTION_DB_PASSWORD")
    assert code == 1, out
    assert f"{staging}:{line}:" in out, out
    assert "secrets.DB_PASSWORD.env: 'PRODUCTION_DB_PASSWORD' does not start with 'STAGING_'" in out
    assert not any(value in e for c in dep.containers() for e in c.attrs["Config"]["Env"])


class _AttackerSsh:
    """An SSH server the attacker runs (paramiko): it counts connections and offers its
    own host key; it lets nobody log in (trust on first use happens before that)."""

    def __init__(self) -> None:
        self.key = paramiko.RSAKey.generate(2048)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.transports: list[paramiko.Transport] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            t = paramiko.Transport(conn)
            t.add_server_key(self.key)
            self.transports.append(t)
            with contextlib.suppress(paramiko.SSHException, EOFError):
                t.start_server(server=paramiko.ServerInterface())

    def close(self) -> None:
        self.sock.close()
        for t in self.transports:
            t.close()


def test_ssh_host_trusted_on_first_use_is_refused(dep: Deployment, tmp_path: Path) -> None:
    """A commit adds an SSH host it runs itself, with host_key_checking: accept-new and a
    known_hosts file of its choice: refused at validation; the reconciler never connects
    to it and records no key for it."""
    evil = _AttackerSsh()
    known = tmp_path / "known_hosts.attacker"
    try:
        inv = dep.repo / "inventory.yaml"
        inv.write_text(inv.read_text() + (
            "  - name: evil\n    address: 127.0.0.1\n    roles: [app]\n"
            f"    connection:\n      ssh:\n        user: root\n        port: {evil.port}\n"
            f"        known_hosts: {known}\n        host_key_checking: accept-new\n"))
        dep.edit("services/web.yaml", "hosts: [local]", "hosts: [local, evil]",
                 "add my host")
        code, out = dep.cli("plan")
        line = line_of(dep.repo, "inventory.yaml", "accept-new")
        assert code == 1, out
        assert f"inventory.yaml:{line}:" in out and "'accept-new' is not allowed" in out, out
        assert "known_hosts" in out and "the operator's policy" in out, out
        assert evil.connections == 0, out
        assert not known.exists() or evil.key.get_base64() not in known.read_text()
    finally:
        evil.close()


# --------------------------------------------------------------------------- item 4


def test_secret_values_never_reach_history_or_output(
    dep: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api prints its secret and dies: the failure (with its log tail) is printed and
    stored with the value blanked out."""
    value = "s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv("STAGING_DB_PASSWORD", value)
    dep.edit("services/api.yaml", "secrets: [DB_PASSWORD]",
             'secrets: [DB_PASSWORD]\ncommand: ["/bin/sh", "-c", '
             '"echo DB_PASSWORD=$DB_PASSWORD; echo $DB_PASSWORD >&2; exit 3"]',
             "api prints its secret")
    code, out = dep.apply()
    assert code == 1 and "api" in out, out
    assert "DB_PASSWORD=******" in out, out  # the log tail is there, blanked
    assert value not in out, out
    code, listing = dep.cli("history", repo=False)
    run = int(listing.split()[1])
    code, steps = dep.cli("history", "--run", str(run), repo=False)
    assert "exit code" in steps or "not healthy" in steps, steps
    assert value not in steps
    for f in dep.state.iterdir():
        if f.is_file():
            assert value.encode() not in f.read_bytes(), f
    db = sqlite3.connect(dep.state / "history.sqlite")
    dump = "\n".join(db.iterdump())
    assert "******" in dump and value not in dump


def test_state_dir_and_its_files_are_private_whatever_the_umask(dep: Deployment) -> None:
    """Under umask 022 (the documented root CLI path) the state dir is 0700 and the
    history, instance, label key and lock files 0600."""
    old = os.umask(0o022)
    try:
        code, out = dep.apply()
    finally:
        os.umask(old)
    assert code == 0, out
    assert stat.S_IMODE(dep.state.stat().st_mode) == 0o700
    for name in ("history.sqlite", "history.sqlite-wal", "history.sqlite-shm", "instance",
                 "label-key", f"{dep.env}.lock"):
        f = dep.state / name
        if name.endswith(("-wal", "-shm")) and not f.exists():
            continue
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, (name, oct(f.stat().st_mode))


# --------------------------------------------------------------------------- item 8


def test_secret_looking_env_values_cannot_be_recovered_from_labels(dep: Deployment) -> None:
    """API_TOKEN=4711 in env: neither the spec label nor the config hash gives it away
    to someone who can list containers and tries every 4-digit value."""
    dep.edit("services/web.yaml", "  LOG_LEVEL: info", '  LOG_LEVEL: info\n  API_TOKEN: "4711"',
             "a token in env")
    code, out = dep.apply()
    assert code == 0, out
    web = dep.containers("web")[0]
    spec = json.loads(web.labels[identity.SPEC])
    shown = dict(spec["env"])["API_TOKEN"]
    assert "4711" not in web.labels[identity.SPEC]
    guesses = [f"{n}" for n in range(10000)]
    by_digest = [g for g in guesses if shown.endswith(hashlib.sha256(g.encode()).hexdigest()[:16])]
    assert by_digest == [], "the label digest gives the value away"

    def old_style_hash(value: str) -> str:
        raw = dict(spec)
        raw["env"] = [[k, value if k == "API_TOKEN" else v] for k, v in spec["env"]]
        payload = identity.canonical_json(
            [dep.env, "web", web.labels[identity.REVISION], raw])
        return hashlib.sha256(payload.encode()).hexdigest()

    chash = web.labels[identity.CONFIG_HASH]
    assert [g for g in guesses if old_style_hash(g) == chash] == [], "the config hash gives it away"
    assert stat.S_IMODE((dep.state / "label-key").stat().st_mode) == 0o600


def test_validate_worktree_never_reads_through_a_link(tmp_path: Path) -> None:
    """A manifests folder with a link to a private file: `validate --worktree` skips
    it and prints nothing of the target."""
    private = tmp_path / "private.txt"
    marker = "hunter2-" + uuid.uuid4().hex
    private.write_text(f"apiVersion: reconciler/v1\nkind: {marker}\n")
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "inventory.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Inventory\nhosts:\n"
        "  - {name: local, address: 127.0.0.1, roles: [app, lb]}\n")
    (folder / "leak.yaml").symlink_to(private)
    (folder / "linked").symlink_to(tmp_path)  # a folder link: not descended either
    r = CliRunner().invoke(main, ["validate", "--worktree", "--repo", str(folder)])
    out = r.stdout + r.stderr
    assert marker not in out, out
    assert r.exit_code == 0 and "leak.yaml is a symbolic link" in out, out


def test_haproxy_files_never_written_through_planted_links(
    dep: Deployment, tmp_path: Path
) -> None:
    """Links planted at the temporary names HAProxy's config and server state used to be
    written to (pid-based, fixed) are not followed; the files get 0600 whatever the
    umask."""
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    folder = dep.state / dep.env / "haproxy"
    folder.mkdir(parents=True)
    for name in (f".haproxy.cfg.{os.getpid()}.new", ".server-state.new"):
        (folder / name).symlink_to(victim)
    old = os.umask(0)
    try:
        code, out = dep.apply()
        dep.edit("loadbalancer.yaml", "client_timeout: 30s", "client_timeout: 31s", "fe")
        code2, out2 = dep.apply()  # a frontend change: a reload, which saves server state
    finally:
        os.umask(old)
    assert code == 0 and code2 == 0, out + out2
    assert victim.read_text() == "untouched\n"
    assert not (folder / "haproxy.cfg").is_symlink()
    assert stat.S_IMODE((folder / "haproxy.cfg").stat().st_mode) == 0o600
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".new") and not p.is_symlink()]
    assert leftovers == [], leftovers
