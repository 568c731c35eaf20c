"""Property: `reconcile diff` is empty exactly when the resolved desired states are equal.

Manifest sets are made from one base repository that sets every field of the schemas,
changed by *mutations*: each one a valid edit of the manifest data, labelled with the
schema path it changes (``Service.health.interval``), plus *rewrites* that spell the same
state differently (``5s`` as ``5000ms``). Both sides go through the real loader
(YAML -> schema -> semantic checks -> ``resolve``), so the diff is tested on the states
users get. The schema paths are read from ``schemas/`` and the model's fields from the
dataclasses: a field added to either without a mutation here fails the coverage checks.

Run: ``.venv/bin/pytest -q -s tests/unit/test_diff_property.py`` (prints the coverage).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired.diff import NOT_DESIRED, diff_states
from reconciler.desired.manifests import load_manifests, resolve
from reconciler.identity import plain
from reconciler.model import DesiredState
from reconciler.present.output import diff_json, diff_markdown, diff_text

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
Repo = dict[str, Any]  # file stem -> manifest data
Mutation = tuple[str, str, Callable[[Repo], None]]  # (schema path, what, edit)

# --------------------------------------------------------------------------- the base

SSH = {"user": "deploy", "port": 22, "key": "/keys/id", "known_hosts": "/keys/known",
       "host_key_checking": "strict", "docker_socket": "/run/docker.sock",
       "state_dir": "/var/lib/reconciler"}


ETCD = {"endpoints": ["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
        "ca": "/etc/rec/ca.crt", "cert": "/etc/rec/client.crt", "key": "/etc/rec/client.key"}


def releases(image: str) -> list[dict[str, Any]]:
    """A baseline at 100 and a canary at 0 with every canary field set."""
    return [
        {"revision": "v1", "weight": 100, "env": {"MODE": "a"}},
        {"revision": "v2", "weight": 0, "image": image, "env": {"MODE": "b"},
         "canary": {"steps": [{"weight": 10, "min_duration": "1m", "min_requests": 100},
                              {"weight": 50}],
                    "analysis": {"confidence": 0.99, "max_error_rate": 0.05,
                                 "interval": "10s", "errors_4xx": False,
                                 "latency": {"quantile": 0.95, "max_slowdown": 1.2,
                                             "min_ms": 2, "enabled": True}}}},
    ]


def base_repo() -> Repo:
    meta = {"apiVersion": "reconciler/v1"}
    return {
        "inventory": {**meta, "kind": "Inventory", "hosts": [
            {"name": "local", "address": "127.0.0.1", "roles": ["app", "lb"],
             "connection": "local"},
            {"name": "app2", "address": "10.0.0.2", "roles": ["app"],
             "connection": {"ssh": dict(SSH)}},
            {"name": "app3", "address": "10.0.0.3", "roles": ["app", "lb"],
             "connection": {"ssh": {"user": "deploy"}}},
        ], "environments": {"production": {"mode": "etcd", "etcd": dict(ETCD)}}},
        "services/web": {
            **meta, "kind": "Service", "name": "web", "image": "sample-app",
            "releases": releases("sample-app:v2"), "replicas": 2, "hosts": ["local", "app2"],
            "port": 8080,
            "health": {"http": "/healthz", "interval": "2s", "timeout": "1s", "retries": 3,
                       "start_period": "1s"},
            "env": {"GREETING": "hello", "LOG_LEVEL": "info", "PORT_HINT": "80"},
            "secrets": ["DB_PASSWORD"], "command": ["/app"], "args": ["serve"],
            "volumes": [{"type": "volume", "source": "data", "target": "/data",
                         "read_only": False}],
            "resources": {"memory": "64m", "cpus": 0.5}, "restart": "unless-stopped",
            "logging": {"driver": "syslog", "options": {"tag": "web"}},
            "labels": {"team": "web"}, "stop_grace_period": "5s",
            "actions": [{"name": "orders.show", "path": "/api/orders/{id}", "method": "GET"}],
            "max_actions": 20,
            "loadbalancing": {"balance": "roundrobin", "timeouts": {
                "connect": "2s", "server": "30s", "queue": "30s"}, "drain_timeout": "10s"},
        },
        "services/api": {**meta, "kind": "Service", "name": "api", "image": "sample-app",
                         "releases": [{"revision": "v1", "weight": 100}], "hosts": ["local"],
                         "port": 8080},
        "services/extra": {**meta, "kind": "Service", "name": "extra", "image": "extra",
                           "releases": [{"revision": "v1", "weight": 100}],
                           "hosts": ["app3"], "port": 9000},
        "loadbalancer": {**meta, "kind": "LoadBalancer", "name": "edge", "hosts": ["local"],
                         "syslog": {"address": "10.0.0.9:514"},
                         "frontends": [
            {"name": "http", "bind": "127.0.0.1:8080", "client_timeout": "30s",
             "default_service": "web", "redirect_https": False,
             "routes": [{"service": "api", "host": "api.example.com", "path_prefix": "/api"}]},
            {"name": "https", "bind": "127.0.0.1:8443",
             "tls": {"certificate": "/etc/ssl/edge.pem"}, "default_service": "web"},
            {"name": "shop", "bind": "127.0.0.1:8444", "default_service": "web", "tls": {
                "acme": {"directory": "https://acme.example/dir", "domains": ["s.example"]}}},
        ]},
        "environments/production": {
            **meta, "kind": "Environment", "name": "production",
            "rollout": {"limit": 2, "wait": "10s", "concurrency": 4, "on_failure": "stop"},
            "secrets": {"DB_PASSWORD": {"file": "/etc/secrets/db", "version": 1},
                        "API_TOKEN": {"file": "/etc/secrets/api"}},
            "services": {
                "api": {"enabled": True, "hosts": ["local"], "replicas": 1,
                        "env": {"FLAVOUR": "prod"}, "releases": releases("sample-app:v3")},
                "extra": {"replicas": 1},
            },
            "loadbalancers": {"edge": {"hosts": ["local"], "frontends": {
                "http": {"bind": "127.0.0.1:8090", "redirect_https": False},
                "https": {"tls": {"certificate": "/etc/ssl/prod.pem"}},
                "shop": {"tls": {"acme": {"directory": "https://acme.example/p",
                                          "domains": ["p.example"]}}}}}},
        },
        "environments/staging": {
            **meta, "kind": "Environment", "name": "staging",
            "secrets": {"DB_PASSWORD": {"env": "STAGING_DB"}, "API_TOKEN": {"env": "API_TOKEN"}},
        },
    }


# --------------------------------------------------------------------------- mutations


def web(r: Repo) -> dict[str, Any]:
    return r["services/web"]


def prod(r: Repo) -> dict[str, Any]:
    return r["environments/production"]


def lb(r: Repo) -> dict[str, Any]:
    return r["loadbalancer"]


def syslog(r: Repo) -> dict[str, Any]:
    """The LB's syslog target (again, when a mutation before removed it)."""
    return lb(r).setdefault("syslog", {"address": "10.0.0.9:514"})  # type: ignore[no-any-return]


ACME_CHANGES: dict[str, Any] = {
    "directory": "https://acme2.example/dir", "domains": ["t.example"], "email": "o@t.example"}


def fe(r: Repo, name: str) -> dict[str, Any]:
    return next(f for f in lb(r)["frontends"] if f["name"] in (name, name + "-2"))


def ssh(r: Repo) -> dict[str, Any]:
    return r["inventory"]["hosts"][1]["connection"]["ssh"]  # type: ignore[no-any-return]


def timeouts(r: Repo) -> dict[str, Any]:
    return web(r)["loadbalancing"]["timeouts"]  # type: ignore[no-any-return]


def setter(get: Callable[[Repo], dict[str, Any]], key: str, value: Any) -> Callable[[Repo], None]:
    def edit(r: Repo) -> None:
        get(r)[key] = value
    return edit


def latency(canary: dict[str, Any]) -> dict[str, Any]:
    """The canary's latency settings, made a mapping again if a mutation turned it off."""
    if not isinstance(canary["analysis"].get("latency"), dict):
        canary["analysis"]["latency"] = {"quantile": 0.95}
    found: dict[str, Any] = canary["analysis"]["latency"]
    return found


def canary_edit(rels: Callable[[Repo], list[dict[str, Any]]],
                change: Callable[[dict[str, Any]], None]) -> Callable[[Repo], None]:
    def edit(r: Repo) -> None:
        if "canary" in rels(r)[1]:  # a weight mutation may have ended the canary
            change(rels(r)[1]["canary"])
    return edit


def no_canary(rels: Callable[[Repo], list[dict[str, Any]]]) -> Callable[[Repo], None]:
    def edit(r: Repo) -> None:
        rels(r)[1].pop("canary", None)
        rels(r)[0]["weight"], rels(r)[1]["weight"] = 70, 30
    return edit


def release_mutations(prefix: str, rels: Callable[[Repo], list[dict[str, Any]]]) -> list[Mutation]:
    """The same edits for a service's releases and an environment's override of them."""
    def steps(c: dict[str, Any]) -> list[dict[str, Any]]:
        return c["steps"]  # type: ignore[no-any-return]
    return [
        (f"{prefix}.revision", "rename the baseline",
         lambda r: rels(r)[0].update(revision="v1b")),
        (f"{prefix}.weight", "end the canary at 70/30", no_canary(rels)),
        (f"{prefix}.image", "canary image", lambda r: rels(r)[1].update(image="other:v9")),
        (f"{prefix}.env.*", "baseline env value", lambda r: rels(r)[0]["env"].update(MODE="c")),
        (f"{prefix}.env.*", "canary env key added",
         lambda r: rels(r)[1]["env"].update(SESSION_SECRET="s3cr3t")),
        (f"{prefix}.canary.steps[].weight", "first step",
         canary_edit(rels, lambda c: steps(c)[0].update(weight=20))),
        (f"{prefix}.canary.steps", "one more step",
         canary_edit(rels, more_steps)),
        (f"{prefix}.canary.steps[].min_duration", "hold longer",
         canary_edit(rels, lambda c: steps(c)[0].update(min_duration="2m"))),
        (f"{prefix}.canary.steps[].min_requests", "more requests",
         canary_edit(rels, lambda c: steps(c)[1].update(min_requests=500))),
        (f"{prefix}.canary.analysis.confidence", "",
         canary_edit(rels, lambda c: c["analysis"].update(confidence=0.95))),
        (f"{prefix}.canary.analysis.max_error_rate", "",
         canary_edit(rels, lambda c: c["analysis"].update(max_error_rate=0.1))),
        (f"{prefix}.canary.analysis.interval", "",
         canary_edit(rels, lambda c: c["analysis"].update(interval="30s"))),
        (f"{prefix}.canary.analysis.errors_4xx", "count 4xx",
         canary_edit(rels, lambda c: c["analysis"].update(errors_4xx=True))),
        (f"{prefix}.canary.analysis.latency", "latency off",
         canary_edit(rels, lambda c: c["analysis"].update(latency=False))),
        (f"{prefix}.canary.analysis.latency.enabled", "",
         canary_edit(rels, lambda c: latency(c).update(enabled=False))),
        (f"{prefix}.canary.analysis.latency.quantile", "",
         canary_edit(rels, lambda c: latency(c).update(quantile=0.99))),
        (f"{prefix}.canary.analysis.latency.max_slowdown", "",
         canary_edit(rels, lambda c: latency(c).update(max_slowdown=1.5))),
        (f"{prefix}.canary.analysis.latency.min_ms", "",
         canary_edit(rels, lambda c: latency(c).update(min_ms=5))),
    ]


# Mutations may meet in any order: renames happen once, and the others find what they
# change whatever name it has by then.


def rename_frontend(r: Repo) -> None:
    fronts = prod_edge(r)["frontends"]
    if "https" in fronts:
        fe(r, "https")["name"] = "https-2"
        fronts["https-2"] = fronts.pop("https")


def rename_lb(r: Repo) -> None:
    lb(r)["name"] = "front"
    prod(r)["loadbalancers"] = {"front": prod_edge(r)}


def rename_service(r: Repo) -> None:
    r["services/extra"]["name"] = "extra2"
    prod(r)["services"]["extra2"] = prod(r)["services"].pop("extra", {"replicas": 1})


def app3(r: Repo) -> str:
    return r["inventory"]["hosts"][2]["name"]  # type: ignore[no-any-return]


def rename_host(r: Repo) -> None:
    old = app3(r)
    r["inventory"]["hosts"][2]["name"] = "app4"
    for where in (r["services/extra"], lb(r), prod_edge(r)):
        where["hosts"] = ["app4" if h == old else h for h in where["hosts"]]


def rename_secret(r: Repo) -> None:
    web(r)["secrets"] = ["DB_PASS" if s == "DB_PASSWORD" else s for s in web(r)["secrets"]]
    for env in ("production", "staging"):
        declared = r[f"environments/{env}"]["secrets"]
        if "DB_PASSWORD" in declared:
            declared["DB_PASS"] = declared.pop("DB_PASSWORD")


def more_secrets(r: Repo) -> None:
    if "API_TOKEN" not in web(r)["secrets"]:
        web(r)["secrets"].append("API_TOKEN")


def more_steps(c: dict[str, Any]) -> None:
    if c["steps"][-1]["weight"] < 90:
        c["steps"].append({"weight": 90})


def health_command(r: Repo) -> None:
    web(r)["health"].pop("http", None)
    web(r)["health"]["command"] = ["/app", "check"]


def health_http(r: Repo) -> None:
    web(r)["health"].pop("command", None)
    web(r)["health"]["http"] = "/ready"


def volume_source(r: Repo) -> None:
    vol = web(r)["volumes"][0]
    vol["source"] = "/srv/other" if vol["type"] == "bind" else "data2"


def etcd(r: Repo) -> dict[str, Any]:
    """production's etcd settings, made etcd mode again if a mutation turned it to ssh."""
    mode = r["inventory"]["environments"]["production"]
    if "etcd" not in mode:
        mode.update(mode="etcd", etcd=dict(ETCD))
    found: dict[str, Any] = mode["etcd"]
    return found


def rename_staging(r: Repo) -> None:
    r["environments/staging"]["name"] = "qa"


def prod_api(r: Repo) -> dict[str, Any]:
    return prod(r)["services"]["api"]  # type: ignore[no-any-return]


def prod_edge(r: Repo) -> dict[str, Any]:
    return next(iter(prod(r)["loadbalancers"].values()))  # type: ignore[no-any-return]


MUTATIONS: list[Mutation] = [
    ("Inventory.hosts[].name", "rename app3", rename_host),
    ("Inventory.hosts[].address", "", setter(lambda r: r["inventory"]["hosts"][1], "address", "10.0.0.22")),
    ("Inventory.hosts[].roles", "", setter(lambda r: r["inventory"]["hosts"][1], "roles", ["app", "lb"])),
    ("Inventory.hosts[].connection.ssh.user", "", setter(ssh, "user", "ops")),
    ("Inventory.hosts[].connection.ssh.port", "", setter(ssh, "port", 2222)),
    ("Inventory.hosts[].connection.ssh.key", "", setter(ssh, "key", "/keys/other")),
    ("Inventory.hosts[].connection.ssh.known_hosts", "", setter(ssh, "known_hosts", "/kh")),
    ("Inventory.hosts[].connection.ssh.host_key_checking", "",
     setter(ssh, "host_key_checking", "accept-new")),
    ("Inventory.hosts[].connection.ssh.docker_socket", "", setter(ssh, "docker_socket", "/d.sock")),
    ("Inventory.hosts[].connection.ssh.state_dir", "", setter(ssh, "state_dir", "/srv/rec")),
    ("Inventory.environments.*.mode", "etcd to ssh",
     lambda r: r["inventory"]["environments"].update(production={"mode": "ssh"})),
    ("Inventory.environments.*.etcd.endpoints", "",
     lambda r: etcd(r).update(endpoints=["https://10.0.0.9:2379"])),
    ("Inventory.environments.*.etcd.ca", "", lambda r: etcd(r).update(ca="/etc/rec/ca2.crt")),
    ("Inventory.environments.*.etcd.cert", "", lambda r: etcd(r).update(cert="/etc/rec/c2.crt")),
    ("Inventory.environments.*.etcd.key", "", lambda r: etcd(r).update(key="/etc/rec/c2.key")),
    ("Inventory.environments.*.etcd.lease_ttl", "", lambda r: etcd(r).update(lease_ttl=9)),
    ("Inventory.environments.*.etcd.agents", "", lambda r: etcd(r).update(agents=True)),
    ("Service.name", "rename extra", rename_service),
    ("Service.image", "", setter(web, "image", "registry.example.com/sample-app")),
    *release_mutations("Service.releases[]", lambda r: web(r)["releases"]),
    ("Service.replicas", "", setter(web, "replicas", 3)),
    ("Service.hosts", "", setter(web, "hosts", ["local"])),
    ("Service.port", "", setter(web, "port", 8081)),
    ("Service.health.http", "", health_http),
    ("Service.health.command", "", health_command),
    ("Service.health.interval", "", lambda r: web(r)["health"].update(interval="5s")),
    ("Service.health.timeout", "", lambda r: web(r)["health"].update(timeout="2s")),
    ("Service.health.retries", "", lambda r: web(r)["health"].update(retries=5)),
    ("Service.health.start_period", "", lambda r: web(r)["health"].update(start_period="9s")),
    ("Service.env.*", "value", lambda r: web(r)["env"].update(GREETING="hi there")),
    ("Service.env.*", "removed", lambda r: web(r)["env"].pop("LOG_LEVEL", None)),
    ("Service.env.*", "secret-looking", lambda r: web(r)["env"].update(API_KEY="apikey-value-1")),
    ("Service.secrets", "", more_secrets),
    ("Service.command", "", setter(web, "command", ["/app", "-v"])),
    ("Service.args", "", setter(web, "args", ["serve", "--fast"])),
    ("Service.volumes", "a second one", lambda r: web(r)["volumes"].append(
        {"type": "volume", "source": "cache", "target": "/cache"})),
    ("Service.volumes[].type", "", lambda r: web(r)["volumes"][0].update(
        type="bind", source="/srv/data")),
    ("Service.volumes[].source", "", volume_source),
    ("Service.volumes[].target", "", lambda r: web(r)["volumes"][0].update(target="/var/d")),
    ("Service.volumes[].read_only", "", lambda r: web(r)["volumes"][0].update(read_only=True)),
    ("Service.resources.memory", "", lambda r: web(r)["resources"].update(memory="128m")),
    ("Service.resources.cpus", "", lambda r: web(r)["resources"].update(cpus=1)),
    ("Service.restart", "", setter(web, "restart", "always")),
    ("Service.logging.driver", "", lambda r: web(r)["logging"].update(driver="json-file")),
    ("Service.logging.options.*", "", lambda r: web(r)["logging"]["options"].update(tag="w2")),
    ("Service.labels.*", "", lambda r: web(r)["labels"].update(team="ops")),
    ("Service.stop_grace_period", "", setter(web, "stop_grace_period", "7s")),
    ("Service.loadbalancing.balance", "",
     lambda r: web(r)["loadbalancing"].update(balance="leastconn")),
    *[(f"Service.loadbalancing.timeouts.{k}", "", setter(timeouts, k, "45s"))
      for k in ("connect", "server", "queue")],
    ("Service.loadbalancing.drain_timeout", "",
     lambda r: web(r)["loadbalancing"].update(drain_timeout="20s")),
    ("Service.actions", "a second one", lambda r: web(r)["actions"].append(
        {"name": "orders.list", "path": "/api/orders"})),
    ("Service.actions[].name", "", lambda r: web(r)["actions"][0].update(name="order")),
    ("Service.actions[].path", "", lambda r: web(r)["actions"][0].update(path="/o/{id}")),
    ("Service.actions[].method", "", lambda r: web(r)["actions"][0].update(method="POST")),
    ("Service.max_actions", "", setter(web, "max_actions", 5)),
    ("LoadBalancer.request_records", "", lambda r: lb(r).update(request_records=False)),
    ("LoadBalancer.syslog", "removed", lambda r: lb(r).pop("syslog")),
    ("LoadBalancer.syslog.address", "", lambda r: syslog(r).update(address="10.1.1.1:1")),
    ("LoadBalancer.syslog.facility", "", lambda r: syslog(r).update(facility="local3")),
    ("LoadBalancer.syslog.format", "", lambda r: syslog(r).update(format="rfc5424")),
    ("LoadBalancer.name", "rename edge", rename_lb),
    ("LoadBalancer.hosts", "", lambda r: lb(r).update(hosts=[app3(r)])),
    ("LoadBalancer.frontends[].name", "rename https", rename_frontend),
    ("LoadBalancer.frontends[].bind", "", lambda r: fe(r, "http").update(bind="127.0.0.1:9090")),
    ("LoadBalancer.frontends[].tls.certificate", "",
     lambda r: fe(r, "https").update(tls={"certificate": "/etc/ssl/other.pem"})),
    ("LoadBalancer.frontends[].tls.acme", "", lambda r: fe(r, "https").update(tls={"acme": {
        "directory": "https://acme.example/dir", "domains": ["a.example"], "email": "o@x.example"}})),
    *[(f"LoadBalancer.frontends[].tls.acme.{k}", "", lambda r, k=k, v=v: fe(r, "shop")["tls"][
        "acme"].update({k: v})) for k, v in ACME_CHANGES.items()],
    ("LoadBalancer.frontends[].redirect_https", "",
     lambda r: fe(r, "http").update(redirect_https=True)),
    ("LoadBalancer.frontends[].client_timeout", "",
     lambda r: fe(r, "http").update(client_timeout="45s")),
    ("LoadBalancer.frontends[].default_service", "",
     lambda r: fe(r, "http").update(default_service="api")),
    ("LoadBalancer.frontends[].routes[].service", "",
     lambda r: fe(r, "http")["routes"][0].update(service="web")),
    ("LoadBalancer.frontends[].routes[].host", "",
     lambda r: fe(r, "http")["routes"][0].update(host="*.example.org")),
    ("LoadBalancer.frontends[].routes[].path_prefix", "",
     lambda r: fe(r, "http")["routes"][0].update(path_prefix="/v2")),
    ("Environment.name", "rename staging", rename_staging),
    ("Environment.rollout.limit", "", lambda r: prod(r)["rollout"].update(limit=1)),
    ("Environment.rollout.wait", "", lambda r: prod(r)["rollout"].update(wait="1m")),
    ("Environment.rollout.concurrency", "", lambda r: prod(r)["rollout"].update(concurrency=2)),
    ("Environment.rollout.on_failure", "",
     lambda r: prod(r)["rollout"].update(on_failure="continue")),
    ("Environment.secrets.*", "rename DB_PASSWORD", rename_secret),
    ("Environment.secrets.*.file", "",
     lambda r: next(iter(prod(r)["secrets"].values())).update(file="/etc/secrets/db2")),
    ("Environment.secrets.*.env", "",
     lambda r: next(iter(r["environments/staging"]["secrets"].values())).update(env="QA_DB")),
    ("Environment.secrets.*.version", "",
     lambda r: next(iter(prod(r)["secrets"].values())).update(version="2")),
    ("Environment.services.*.enabled", "", lambda r: next(
        v for k, v in prod(r)["services"].items() if k.startswith("extra")).update(enabled=False)),
    ("Environment.services.*.hosts", "", lambda r: prod_api(r).update(hosts=["local", "app2"])),
    ("Environment.services.*.replicas", "", lambda r: prod_api(r).update(replicas=4)),
    ("Environment.services.*.env.*", "", lambda r: prod_api(r)["env"].update(FLAVOUR="big")),
    *release_mutations("Environment.services.*.releases[]", lambda r: prod_api(r)["releases"]),
    ("Environment.loadbalancers.*.hosts", "", lambda r: prod_edge(r).update(hosts=[app3(r)])),
    ("Environment.loadbalancers.*.frontends.*.bind", "",
     lambda r: prod_edge(r)["frontends"]["http"].update(bind=":8091")),
    ("Environment.loadbalancers.*.frontends.*.tls.certificate", "",
     lambda r: next(v for k, v in prod_edge(r)["frontends"].items() if k != "http").update(
         tls={"certificate": "/etc/ssl/prod2.pem"})),
    ("Environment.loadbalancers.*.frontends.*.tls.acme", "",
     lambda r: next(v for k, v in prod_edge(r)["frontends"].items() if k != "http").update(
         tls={"acme": {"directory": "https://acme.example/d", "domains": ["b.example"],
                       "email": "o@b.example"}})),
    *[(f"Environment.loadbalancers.*.frontends.*.tls.acme.{k}", "",
       lambda r, k=k, v=v: prod_edge(r)["frontends"]["shop"]["tls"]["acme"].update({k: v}))
      for k, v in ACME_CHANGES.items()],
    ("Environment.loadbalancers.*.frontends.*.redirect_https", "",
     lambda r: prod_edge(r)["frontends"]["http"].update(redirect_https=True)),
]

# Edits that spell the same desired state differently: the diff must stay empty.
REWRITES: list[Mutation] = [
    ("", "5s as 5000ms", setter(web, "stop_grace_period", "5000ms")),
    ("", "env keys reordered", lambda r: web(r).update(env=dict(reversed(web(r)["env"].items())))),
    ("", "env value as a number", lambda r: web(r)["env"].update(PORT_HINT=80)),
    ("", "explicit default wait", lambda r: r["environments/staging"].update(rollout={"wait": "0s"})),
    ("", "explicit default lease_ttl", lambda r: r["inventory"]["environments"]["production"]
     .get("etcd", {}).setdefault("lease_ttl", 5)),
    ("", "explicit default read_only", lambda r: web(r)["volumes"][0].update(read_only=False)),
    ("", "override equal to the service", lambda r: r["environments/staging"].update(
        services={"web": {"replicas": web(r)["replicas"]}})),
    ("", "fields in another order", lambda r: r.update(
        {"services/api": dict(reversed(r["services/api"].items()))})),
    ("", "1m as 60s", canary_edit(lambda r: web(r)["releases"],
                                  lambda c: c["steps"][0].update(min_duration="60s"))),
]

# --------------------------------------------------------------------------- helpers


# libyaml's emitter when there is one: the same text as PyYAML's (every mutation's files
# compared), five times faster.
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load(repo: Repo) -> dict[str, DesiredState]:
    """Every environment's desired state, through the real loader (raises on bad input)."""
    files = [(f"{stem}.yaml", yaml.dump(data, Dumper=DUMPER, sort_keys=False).encode())
             for stem, data in repo.items()]
    m = load_manifests(files)
    return {env: resolve(m, env, "c0ffee") for env in m.environment_names()}


def apply(mutations: list[Mutation]) -> Repo:
    repo = base_repo()
    for _, _, edit in mutations:
        edit(repo)
    return repo


def check_pair(base: dict[str, DesiredState], head: dict[str, DesiredState]) -> bool:
    """The property on every environment of either side; True when some state differs."""
    differs = False
    for env in sorted(set(base) | set(head)):
        empty = DesiredState(env, "c0ffee", (), (), ())
        old, new = base.get(env, empty), head.get(env, empty)
        d = diff_states(old, new)
        equal = old == new
        assert (not d.items) == equal, (env, equal, d.items)
        text = diff_text([d], "a", "b")
        assert ("no changes" in text) == equal
        for out in (text, diff_json([d], "a", "b"), diff_markdown([d], "a", "b")):
            assert "s3cr3t" not in out and "apikey-value" not in out  # secret-looking values masked
        differs |= not equal
    return differs


def schema_paths() -> set[str]:
    """Every property path of the manifest schemas (``Service.health.interval``; ``[]``
    for array items, ``*`` for map values), following ``$ref`` across files."""
    docs = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")}

    def deref(node: dict[str, Any], file: str) -> tuple[dict[str, Any], str]:
        while "$ref" in node:
            target, _, pointer = node["$ref"].partition("#")
            file = target or file
            node = docs[file]
            for part in filter(None, pointer.split("/")):
                node = node[part]
        return node, file

    def walk(node: dict[str, Any], file: str, prefix: str) -> Iterator[str]:
        node, file = deref(node, file)
        for alt in node.get("oneOf", []) + node.get("anyOf", []):
            yield from walk(alt, file, prefix)
        for key, sub in node.get("properties", {}).items():
            if key not in ("apiVersion", "kind"):
                yield f"{prefix}.{key}"
                yield from walk(sub, file, f"{prefix}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            yield f"{prefix}.*"
            yield from walk(node["additionalProperties"], file, f"{prefix}.*")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], file, f"{prefix}[]")

    return {p for name, doc in docs.items()
            if (kind := doc.get("properties", {}).get("kind", {}).get("const"))
            for p in walk(doc, name, kind)}


def model_paths(cls: type = DesiredState, prefix: str = "") -> set[str]:
    """Every field path of the desired-state dataclasses (``services[].releases[].spec.env``)."""
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        out.add(path)
        tp, suffix = hints[f.name], ""
        while True:  # unwrap X | None and tuple[X, ...]
            args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
            if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
                tp = args[0]
            elif typing.get_origin(tp) is tuple and len(args) == 1:
                tp, suffix = args[0], suffix + "[]"
            else:
                break
        if is_dataclass(tp):
            out |= model_paths(tp, f"{path}{suffix}.")  # type: ignore[arg-type]
    return out


def changed_model_paths(old: Any, new: Any, prefix: str = "") -> set[str]:
    """The model field paths whose values differ between two plain() structures."""
    if old == new:
        return set()
    if isinstance(old, dict) and isinstance(new, dict):
        out = set()
        for k in new:
            if old.get(k) != new[k]:
                out.add(prefix + k)
                out |= changed_model_paths(old.get(k), new[k], f"{prefix}{k}.")
        return out
    if isinstance(old, list) and isinstance(new, list):
        base = prefix[:-1] + "[]."
        out = set()
        for a, b in zip(old, new, strict=False):
            out |= changed_model_paths(a, b, base)
        extra = new[len(old):] or old[len(new):]
        for x in extra:  # a whole added or removed record: all of its fields
            out |= changed_model_paths({}, x, base) if isinstance(x, dict) else set()
        return out
    if isinstance(new, dict):  # None -> a record
        return changed_model_paths({}, new, prefix)
    return set()


# --------------------------------------------------------------------------- tests

BASE = load(base_repo())


def test_every_field_changed_alone_shows_in_the_diff() -> None:
    """Each mutation alone changes some environment and the diff shows it; each rewrite
    changes nothing and the diff is empty. Covers every schema and model field."""
    model_changed: set[str] = set()
    for path, what, edit in MUTATIONS + REWRITES:
        head = load(apply([(path, what, edit)]))
        differs = check_pair(BASE, head)
        assert differs == bool(path), f"{path or 'rewrite'} ({what}): differs={differs}"
        for env in set(BASE) & set(head):
            model_changed |= changed_model_paths(plain(BASE[env]), plain(head[env]))
    in_schema = schema_paths()
    mutated = {p for path, _, _ in MUTATIONS for p in prefixes(path)}
    model = {p for p in model_paths() if p.split(".")[0] not in NOT_DESIRED}
    line = (f"diff property: {len(MUTATIONS)} mutations + {len(REWRITES)} rewrites; schema "
            f"fields mutated {len(mutated & in_schema)}/{len(in_schema)}; model fields changed "
            f"{len(model_changed & model)}/{len(model)}")
    print(line)
    assert mutated <= in_schema, f"mutations of unknown schema paths: {sorted(mutated - in_schema)}"
    assert in_schema <= mutated, f"{line}; never mutated: {sorted(in_schema - mutated)}"
    assert model <= model_changed, f"{line}; never changed: {sorted(model - model_changed)}"


def prefixes(path: str) -> Iterator[str]:
    """``A.b[].c`` -> ``A.b``, ``A.b[].c`` (a field is mutated when one inside it is)."""
    parts = path.split(".")
    for i in range(2, len(parts) + 1):
        yield ".".join(parts[:i]).removesuffix("[]")


COVERED: set[str] = set()


CHOICES = MUTATIONS + REWRITES
EXAMPLES = 60


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(st.permutations(range(len(CHOICES))), st.integers(0, 8), st.integers(0, 5), st.booleans())
def test_diff_is_empty_exactly_when_states_are_equal(
    order: list[int], n_base: int, n_extra: int, swap: bool
) -> None:
    """Random sets of mutations on both sides: the head is the base plus up to five more
    edits (none: equal states; rewrites only, or edits that undo each other: equal
    too); either side may come first. A permutation, so an example never repeats one."""
    picked = [CHOICES[i] for i in order[: n_base + n_extra]]
    base, extra = picked[:n_base], picked[n_base:]
    old, new = load(apply(base)), load(apply(base + extra))
    if swap:
        old, new = new, old
    check_pair(old, new)
    COVERED.update(p for path, _, _ in picked if path for p in prefixes(path))


def test_print_random_coverage() -> None:
    """Runs after the property test (file order) and reports what it reached."""
    in_schema = schema_paths()
    print(f"diff property (random pairs): {EXAMPLES} examples, schema fields mutated "
          f"{len(COVERED & in_schema)}/{len(in_schema)}")
