"""The Inventory's ``environments``: each environment's mode (ssh or etcd) with its
etcd settings; bad settings are problems naming file, line, field and value
(reconciler.desired.coordination)."""

from __future__ import annotations

import pytest

from reconciler.coordination import Coordination, EtcdSettings
from reconciler.desired.coordination import coordination
from reconciler.desired.manifests import load_manifests, resolve
from reconciler.errors import ManifestError

SERVICE = b"""apiVersion: reconciler/v1
kind: Service
name: web
image: sample-app
releases: [{revision: v1, weight: 100}]
hosts: [local]
port: 8080
"""
ENVS = b"""apiVersion: reconciler/v1
kind: Environment
name: production
---
apiVersion: reconciler/v1
kind: Environment
name: staging
"""


def inventory(environments: str) -> bytes:
    return (b"""apiVersion: reconciler/v1
kind: Inventory
hosts:
  - name: local
    address: 127.0.0.1
    roles: [app, lb]
""" + environments.encode())


ETCD = """environments:
  production:
    mode: etcd
    etcd:
      endpoints: [https://10.0.0.1:2379, https://etcd2.example:2379]
      ca: /etc/reconciler/etcd/ca.crt
      cert: /etc/reconciler/etcd/client.crt
      key: ~/etcd/client.key
"""


def files(environments: str, *extra: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    return [("inventory.yaml", inventory(environments)), ("services/web.yaml", SERVICE),
            ("envs.yaml", ENVS), *extra]


def problems(environments: str, *extra: tuple[str, bytes]) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifests(files(environments, *extra))
    return [str(p) for p in exc.value.problems]


def test_without_environments_every_environment_is_ssh_as_before() -> None:
    m = load_manifests(files(""))
    assert coordination(m, "production") == Coordination() == coordination(m, "staging")
    assert Coordination().mode == "ssh"
    assert resolve(m, "production", "c0ffee").environment == "production"


def test_an_etcd_environment_gets_its_settings_and_the_others_stay_ssh(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ops")
    m = load_manifests(files(ETCD))
    assert coordination(m, "production") == Coordination(
        mode="etcd",
        etcd=EtcdSettings(
            endpoints=("https://10.0.0.1:2379", "https://etcd2.example:2379"),
            ca="/etc/reconciler/etcd/ca.crt", cert="/etc/reconciler/etcd/client.crt",
            key="/home/ops/etcd/client.key", lease_ttl=5))
    assert coordination(m, "staging").mode == "ssh"
    m = load_manifests(files(ETCD.replace("      key:", "      lease_ttl: 10\n      key:")))
    settings = coordination(m, "production").etcd
    assert settings is not None and settings.lease_ttl == 10
    m = load_manifests(files("environments:\n  staging: {mode: ssh}\n"))
    assert coordination(m, "staging") == Coordination()


@pytest.mark.parametrize(("environments", "expected"), [
    (ETCD.replace("production:", "prod:"),
     "inventory.yaml:8:3: environments.prod: unknown environment 'prod' (known: production, staging)"),
    ("environments:\n  production: {mode: etcd}\n",
     "inventory.yaml:8:22: environments.production.mode: mode etcd needs etcd: {endpoints, ca, cert, key}"),
    (ETCD.replace("mode: etcd", "mode: ssh"),
     "inventory.yaml:10:5: environments.production.etcd: etcd settings are only for mode etcd (mode is 'ssh')"),
    (ETCD.replace("https://10.0.0.1:2379", "http://10.0.0.1:2379"),
     "inventory.yaml:11:19: environments.production.etcd.endpoints[0]: 'http://10.0.0.1:2379' is not a valid etcd endpoint: https://host:port (an IPv4 address or a DNS name)"),
    (ETCD.replace("https://10.0.0.1:2379", "https://10.0.0.1"),
     "inventory.yaml:11:19: environments.production.etcd.endpoints[0]: 'https://10.0.0.1' is not a valid etcd endpoint: https://host:port (an IPv4 address or a DNS name)"),
    (ETCD.replace("https://10.0.0.1:2379", "https://10.0.0.1:70000"),
     "inventory.yaml:11:19: environments.production.etcd.endpoints[0]: 'https://10.0.0.1:70000': port must be 1-65535"),
    (ETCD.replace("https://10.0.0.1:2379", "https://10.0.0.300:2379"),
     "inventory.yaml:11:19: environments.production.etcd.endpoints[0]: 'https://10.0.0.300:2379': '10.0.0.300' is not a valid IPv4 address"),
    (ETCD.replace("etcd2.example", "10.0.0.1"),
     "inventory.yaml:11:18: environments.production.etcd.endpoints: ['https://10.0.0.1:2379', 'https://10.0.0.1:2379'] has non-unique elements"),
    (ETCD.replace("/etc/reconciler/etcd/ca.crt", "etc/ca.crt"),
     "inventory.yaml:12:11: environments.production.etcd.ca: 'etc/ca.crt' is not a valid file path: absolute (/...) or in the home directory (~/...)"),
    (ETCD.replace("/etc/reconciler/etcd/client.crt", "/etc/../root/client.crt"),
     "inventory.yaml:13:13: environments.production.etcd.cert: '/etc/../root/client.crt' must not contain '..'"),
    (ETCD.replace("      key: ~/etcd/client.key\n", ""),
     "inventory.yaml:11:7: environments.production.etcd: missing required field 'key'"),
    (ETCD.replace("      key:", "      lease_ttl: 1\n      key:"),
     "inventory.yaml:14:18: environments.production.etcd.lease_ttl: 1 is less than the minimum of 2"),
    (ETCD.replace("      key:", "      lease_ttl: 5s\n      key:"),
     "inventory.yaml:14:18: environments.production.etcd.lease_ttl: '5s' is not of type 'integer'"),
    (ETCD.replace("mode: etcd", "mode: raft"),
     "inventory.yaml:9:11: environments.production.mode: 'raft' is not one of ['ssh', 'etcd']"),
])
def test_bad_settings_are_problems_naming_file_line_field_and_value(
        environments: str, expected: str) -> None:
    assert expected in problems(environments), problems(environments)


def test_an_environment_whose_mode_two_inventories_give_is_a_problem() -> None:
    second = b"""apiVersion: reconciler/v1
kind: Inventory
hosts:
  - {name: other, address: 10.0.0.9, roles: [app], connection: {ssh: {user: deploy}}}
environments:
  production: {mode: ssh}
"""
    found = problems(ETCD, ("more/inventory.yaml", second))
    assert ("more/inventory.yaml:6:3: environments.production: environment 'production' "
            "already has its mode in inventory.yaml:8") in found or (
            "inventory.yaml:8:3: environments.production: environment 'production' "
            "already has its mode in more/inventory.yaml:6") in found, found
