"""The operator policy (reconciler.desired.policy) and the checks against it (reconciler.desired.trust):
defaults that keep sample-repo valid, every setting read from a file, bad files reported
with file:line, bind sources, secret paths and prefixes, SSH trust, scrubbing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from repo_support import SAMPLE

from reconciler.desired.manifests import load_manifests, manifest_files, resolve
from reconciler.desired.policy import Policy, PolicyError, load, parse
from reconciler.errors import ManifestError
from reconciler.redact import Redactor


def sample_files() -> list[tuple[str, bytes]]:
    names = [p.relative_to(SAMPLE).as_posix() for p in SAMPLE.rglob("*") if p.is_file()]
    return [(n, (SAMPLE / n).read_bytes()) for n in manifest_files(names) if "app/" not in n]


def test_defaults_keep_the_sample_valid() -> None:
    m = load_manifests(sample_files())
    for env in ("production", "staging"):
        resolve(m, env, "c0ffee", Policy().with_state_dir("/var/lib/reconciler"))


def test_default_rules() -> None:
    rules = Policy().secret_rules("my-env")
    assert rules.directory == "/etc/reconciler/secrets/my-env"
    assert rules.env_prefix == "MY_ENV_"
    assert rules.relative("/etc/reconciler/secrets/my-env/db") == "db"
    for bad in ("/etc/shadow", "/etc/reconciler/secrets/other/db",
                "/etc/reconciler/secrets/my-env", "/etc/reconciler/secrets/my-env/./db",
                "/etc/reconciler/secrets/my-env//db"):
        assert rules.relative(bad) is None, bad


@pytest.mark.parametrize(("source", "allowed"), [
    ("/srv/data", True), ("/srv", True), ("/srvx", False), ("/", False),
    ("/var/run/docker.sock", False), ("/var/run", False), ("/var", False),
    ("/etc/reconciler/secrets", False), ("/state", False), ("/state/x", False),
    ("/srv/../etc", False),
])
def test_bind_sources(source: str, allowed: bool) -> None:
    policy = Policy(bind_allowed=("/srv", "/var", "/state")).with_state_dir("/state")
    assert (policy.bind_problem(source) is None) is allowed, policy.bind_problem(source)


def test_every_setting_is_read(tmp_path: Path) -> None:
    text = (
        "bind_mounts: {allowed: [/data], denied: [/data/keys]}\n"
        "secrets: {directory: '/s/{environment}', env_prefix: X_}\n"
        "environments: {prod: {secrets_directory: /p, env_prefix: P_}}\n"
        "ssh:\n  known_hosts: /k\n  key: /id\n"
        "  hosts: {app9: {address: 10.0.0.9, host_key_checking: accept-new, known_hosts: /k9}}\n"
    )
    p = parse("policy.yaml", text)
    assert p.bind_allowed == ("/data",) and p.bind_problem("/data/keys/a") is not None
    assert p.secret_rules("dev").directory == "/s/dev" and p.secret_rules("dev").env_prefix == "X_"
    assert p.secret_rules("prod").directory == "/p" and p.secret_rules("prod").env_prefix == "P_"
    assert p.ssh_for("app1").known_hosts == "/k" and p.ssh_for("app1").key == "/id"
    app9 = p.ssh_for("app9")
    assert (app9.host_key_checking, app9.address, app9.known_hosts, app9.key) == (
        "accept-new", "10.0.0.9", "/k9", "/id")


@pytest.mark.parametrize(("text", "where"), [
    ("ssh: {host_key_checking: accept-new}\n", "policy.yaml:1:"),
    ("ssh:\n  hosts:\n    a: {host_key_checking: accept-new}\n", "policy.yaml:3:"),
    ("bind_mounts:\n  allowd: [/srv]\n", "policy.yaml:2:"),
    ("secrets: {directory: relative}\n", "policy.yaml:1:"),
    ("- a list\n", "policy.yaml:1:"),
    ("a: [\n", "policy.yaml:"),
])
def test_bad_policy_files_name_file_and_line(text: str, where: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse("policy.yaml", text)
    assert where in str(err.value), str(err.value)


def test_policy_file_others_may_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("{}\n")
    os.chmod(path, 0o666)
    with pytest.raises(PolicyError, match="refusing it"):
        load(path)
    os.chmod(path, 0o644)
    assert load(path).source == str(path)
    with pytest.raises(PolicyError, match="does not exist"):
        load(tmp_path / "missing.yaml")


def test_ssh_host_gets_the_policy_trust_and_manifest_cannot_widen_it() -> None:
    inventory = (
        "apiVersion: reconciler/v1\nkind: Inventory\nhosts:\n"
        "  - {name: local, address: 127.0.0.1, roles: [lb]}\n"
        "  - name: app1\n    address: 10.0.0.1\n    roles: [app]\n"
        "    connection: {ssh: {user: deploy, host_key_checking: accept-new, key: /mine}}\n"
    )
    files = [(n, b) for n, b in sample_files() if n != "inventory.yaml"]
    files = [(n, b.replace(b"hosts: [local]", b"hosts: [app1]") if n.startswith("services")
              else b) for n, b in files]
    m = load_manifests([*files, ("inventory.yaml", inventory.encode())])
    with pytest.raises(ManifestError) as err:
        resolve(m, "staging", "c0ffee", Policy())
    text = str(err.value)
    assert "inventory.yaml:8:" in text and "'accept-new' is not allowed" in text, text
    assert "connection.ssh.key: '/mine' is not the SSH agent's" in text, text
    allowed = parse("p.yaml", "ssh:\n  key: /mine\n  hosts:\n    app1: {address: 10.0.0.1, "
                    "host_key_checking: accept-new, known_hosts: /kh}\n")
    desired = resolve(m, "staging", "c0ffee", allowed)
    ssh = desired.host("app1").ssh
    assert ssh is not None
    assert (ssh.key, ssh.known_hosts, ssh.host_key_checking) == ("/mine", "/kh", "accept-new")


def test_redactor_blanks_values_and_their_lines() -> None:
    r = Redactor()
    r.add("line-one\nline-two")
    r.add_env({"API_TOKEN": "4711", "PIN_TOKEN": "12", "DB": "shh"}, ["DB"])
    text = r.scrub("a line-one b line-two c 4711 d 12 e shh")
    assert text == "a ****** b ****** c ****** d 12 e ******"
