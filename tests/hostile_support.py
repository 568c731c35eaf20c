"""The hostile-input matrix of the corpus test (``tests/unit/test_corpus.py``).

A *rich base* repository (every field of every kind present, valid) is written from
Python data; the string fields are derived from the JSON Schemas in ``schemas/`` (so a
new field fails the test until the base has it); each case plants one hostile string
at one field (a value, a mapping key, or an unknown extra key) of one file, and the
repository is loaded in-process with ``load_manifests``.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
KIND_SCHEMAS = {
    "Inventory": "inventory.schema.json",
    "LoadBalancer": "loadbalancer.schema.json",
    "Service": "service.schema.json",
    "Environment": "environment.schema.json",
}
MARKER = "HOSTILEMARKER7"
# libyaml's emitter when there is one: the same text as PyYAML's for every file the
# matrix writes (compared), several times faster.
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

_CANARY = {
    "steps": [{"weight": 10, "min_duration": "1m", "min_requests": 10}],
    "analysis": {"confidence": 0.99, "max_error_rate": 0.05, "interval": "10s",
                 "errors_4xx": False,
                 "latency": {"enabled": True, "quantile": 0.95, "max_slowdown": 1.2,
                             "min_ms": 2}},
}
# Every field of every kind, valid together: the base each case breaks in one place.
BASE: dict[str, dict[str, Any]] = {
    "inventory.yaml": {
        "apiVersion": "reconciler/v1",
        "kind": "Inventory",
        "hosts": [
            {"name": "local", "address": "127.0.0.1", "roles": ["app", "lb"],
             "connection": "local"},
            {"name": "app1", "address": "app1.example", "roles": ["app"],
             "connection": {"ssh": {
                 "user": "deploy", "port": 22, "key": "~/.ssh/id_ed25519",
                 "known_hosts": "/home/ops/.ssh/known_hosts", "host_key_checking": "strict",
                 "docker_socket": "/run/docker.sock", "state_dir": "/srv/reconciler"}}},
        ],
        "environments": {"production": {"mode": "etcd", "etcd": {
            "endpoints": ["https://10.0.0.1:2379", "https://etcd2.example:2379"],
            "ca": "/etc/reconciler/etcd/ca.crt", "cert": "/etc/reconciler/etcd/client.crt",
            "key": "~/etcd/client.key", "lease_ttl": 5}}},
    },
    "loadbalancer.yaml": {
        "apiVersion": "reconciler/v1",
        "kind": "LoadBalancer",
        "name": "edge",
        "hosts": ["local"],
        "frontends": [
            {"name": "https", "bind": "127.0.0.1:8443",
             "tls": {"certificate": "/etc/haproxy/site.pem"}, "client_timeout": "30s",
             "routes": [{"host": "api.example.com", "path_prefix": "/api", "service": "api"}],
             "default_service": "web"},
            {"name": "http", "bind": "127.0.0.1:8080", "redirect_https": True},
            {"name": "shop", "bind": "127.0.0.1:8444", "default_service": "web",
             "tls": {"acme": {"directory": "https://acme.example.com/directory",
                              "domains": ["shop.example.com"], "email": "ops@example.com"}}},
        ],
        "request_records": True,
        "syslog": {"address": "127.0.0.1:514", "facility": "local0", "format": "rfc5424"},
    },
    "services/web.yaml": {
        "apiVersion": "reconciler/v1",
        "kind": "Service",
        "name": "web",
        "image": "sample-app",
        "releases": [
            {"revision": "v1", "weight": 100, "env": {"REL": "one"}},
            {"revision": "v2", "weight": 0, "image": "sample-app:v2", "canary": _CANARY},
        ],
        "replicas": 1,
        "hosts": ["local"],
        "port": 8080,
        "health": {"http": "/healthz", "interval": "1s", "timeout": "1s", "retries": 3,
                   "start_period": "2s"},
        "env": {"GREETING": "hello"},
        "command": ["/app"],
        "args": ["serve"],
        "volumes": [{"type": "bind", "source": "/srv/web", "target": "/data",
                     "read_only": True}],
        "resources": {"memory": "64m", "cpus": 0.5},
        "restart": "unless-stopped",
        "logging": {"driver": "syslog", "options": {"tag": "web"}},
        "labels": {"team": "web"},
        "stop_grace_period": "5s",
        "loadbalancing": {"balance": "roundrobin", "drain_timeout": "10s",
                          "timeouts": {"connect": "2s", "server": "30s", "queue": "30s"}},
        "actions": [{"name": "orders.show", "path": "/api/orders/{id}", "method": "GET"}],
        "max_actions": 20,
    },
    "services/api.yaml": {
        "apiVersion": "reconciler/v1",
        "kind": "Service",
        "name": "api",
        "image": "sample-app",
        "releases": [{"revision": "v1", "weight": 100}],
        "hosts": ["local"],
        "port": 8080,
        "health": {"command": ["/app", "check"]},
        "secrets": ["DB_PASSWORD", "API_TOKEN"],
        "volumes": [{"type": "volume", "source": "api-data", "target": "/data"}],
    },
    "environments/production.yaml": {
        "apiVersion": "reconciler/v1",
        "kind": "Environment",
        "name": "production",
        "rollout": {"limit": 1, "wait": "0s", "concurrency": 2, "on_failure": "stop"},
        "secrets": {
            "DB_PASSWORD": {"file": "/etc/reconciler/db", "version": "1"},
            "API_TOKEN": {"env": "API_TOKEN_VALUE"},
        },
        # api's overrides, so that web's own releases (and their env) stay in effect
        "services": {"api": {
            "enabled": True, "hosts": ["local"], "replicas": 1, "env": {"LOG_LEVEL": "info"},
            "releases": [
                {"revision": "v1", "weight": 100, "image": "sample-app:v1", "env": {"X": "y"}},
                {"revision": "v3", "weight": 0, "canary": _CANARY},
            ]}},
        "loadbalancers": {"edge": {"hosts": ["local"], "frontends": {"https": {
            "bind": "127.0.0.1:9443", "tls": {"certificate": "/etc/haproxy/prod.pem"},
            "redirect_https": False}, "shop": {"tls": {"acme": {
                "directory": "https://acme.example.com/prod", "domains": ["shop.example.com"],
                "email": "ops@example.com"}}}}}},
    },
}

# --------------------------------------------------------------------------- the strings


def hostile(base: str) -> dict[str, str]:
    """The hostile set, built around a valid ``base`` value (so that a check that only
    looks at the start of a value, or a ``$`` that allows a final newline, is caught)."""
    return {
        "lf-suffix": base + "\n",
        "crlf-forged-line": base + "\r\nerror: forged.yaml:1:1: x: forged",
        "cr": base + "\rX",
        "esc": f"\x1b[31m{base}\x1b[0m",
        "nul": base + "\x00x",
        "tab": base + "\tx",
        "del": base + "\x7f",
        "line-separator": base + "\u2028x",
        "bidi-override": base + "\u202ex",
        "zero-width": base + "\u200b",
        "quote": base + "'x",
        "double-quote": base + '"x',
        "command-substitution": "$(touch /tmp/pwned)",
        "backticks": base + "`id`",
        "dotdot": "../../etc/passwd",
        "dotdot-suffix": base + "/../x",
        "space-word": base + " x",
        "hash": base + "#x",
        "long": base + "x" * 300,
        "very-long": "y" * 2000,  # beyond YAML's 1024-character limit of a simple key
        "non-ascii": base + "é☃",
        "empty": "",
    }


# A mapping key that is not a field at all: its message quotes it.
EXTRA_KEY_STRINGS = ("crlf-forged-line", "esc", "nul", "line-separator", "long", "empty")


def yaml_quoted(value: str) -> str:
    """``value`` as a YAML double-quoted scalar on one line: every character that YAML
    would not read back as itself (control, format, separators, ...) escaped."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or 0x7F <= code <= 0x9F or unicodedata.category(ch) in (
            "Cf", "Zl", "Zp", "Cs", "Co", "Cn"
        ):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


# --------------------------------------------------------------------------- schema walk

Pattern = tuple[str, ...]  # field names, "[]" for list items, "{}" for map entries


@dataclass(frozen=True)
class Field:
    """A place for a string: ``value`` (a string field), ``key`` (the key of a map
    entry at ``path``, which ends in ``{}``) or ``extra`` (a new key in the object at
    ``path``)."""

    kind: str
    doc_kind: str
    path: Pattern

    def __str__(self) -> str:
        shown = ".".join(self.path) or "(top)"
        return f"{self.doc_kind}:{shown}:{self.kind}"


def _schema(file: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / file).read_text())
    return data


def _resolve(node: dict[str, Any], file: str) -> tuple[dict[str, Any], str]:
    while "$ref" in node:
        target, _, pointer = node["$ref"].partition("#")
        file = target or file
        node = _schema(file)
        for part in pointer.strip("/").split("/"):
            node = node[part] if part else node
    return node, file


def _is_string(node: dict[str, Any]) -> bool:
    t = node.get("type")
    values = node.get("enum", []) + ([node["const"]] if "const" in node else [])
    return t == "string" or (isinstance(t, list) and "string" in t) or any(
        isinstance(v, str) for v in values
    )


def schema_fields(node: dict[str, Any], file: str, kind: str, path: Pattern = ()) -> Iterator[Field]:
    """Every place a string can be written in a document of ``kind``."""
    node, file = _resolve(node, file)
    if _is_string(node):
        yield Field("value", kind, path)
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        yield from schema_fields(branch, file, kind, path)
    if "properties" in node:
        yield Field("extra", kind, path)
        for name, sub in node["properties"].items():
            yield from schema_fields(sub, file, kind, (*path, name))
    if isinstance(node.get("items"), dict):
        yield from schema_fields(node["items"], file, kind, (*path, "[]"))
    if isinstance(node.get("additionalProperties"), dict):
        yield Field("key", kind, (*path, "{}"))
        yield from schema_fields(node["additionalProperties"], file, kind, (*path, "{}"))


def all_fields() -> list[Field]:
    """The fields of every kind, each once."""
    found: dict[str, Field] = {}
    for kind, file in KIND_SCHEMAS.items():
        for f in schema_fields(_schema(file), file, kind):
            found.setdefault(str(f), f)
    return list(found.values())


# --------------------------------------------------------------------------- planting


def _instances(data: Any, pattern: Pattern, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Concrete paths in ``data`` that match ``pattern``."""
    if not pattern:
        yield at
        return
    head, rest = pattern[0], pattern[1:]
    if head == "[]" and isinstance(data, list):
        for i, item in enumerate(data):
            yield from _instances(item, rest, (*at, i))
    elif head == "{}" and isinstance(data, dict):
        for k, v in data.items():
            yield from _instances(v, rest, (*at, k))
    elif isinstance(data, dict) and head in data:
        yield from _instances(data[head], rest, (*at, head))


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def find_instance(field: Field) -> tuple[str, tuple[Any, ...]] | None:
    """The first place of the base where ``field`` is written (a string, for values)."""
    for name, doc in BASE.items():
        if doc["kind"] != field.doc_kind:
            continue
        for path in _instances(doc, field.path):
            value = _get(doc, path)
            if field.kind == "value" and isinstance(value, str):
                return name, path
            if field.kind == "extra" and isinstance(value, dict):
                return name, path
            if field.kind == "key":
                return name, path
    return None


@dataclass(frozen=True)
class Case:
    field: Field
    variant: str
    file: str
    text: str  # the planted file
    line: int  # where the planted string is
    value: str


@dataclass(frozen=True)
class Template:
    """One field's file with the marker where the hostile string goes."""

    field: Field
    file: str
    text: str
    line: int

    def plant(self, variant: str, value: str) -> Case:
        text = self.text.replace(MARKER, yaml_quoted(value), 1)
        return Case(self.field, variant, self.file, text, self.line, value)


@cache
def template(field: Field, file: str, path: tuple[Any, ...]) -> Template:
    """``file`` of the base with the marker at ``path`` (the value, the key, or a new
    key of the object there); dumped once per field, planted once per string."""
    doc = copy.deepcopy(BASE[file])
    if field.kind == "value":
        parent, last = _get(doc, path[:-1]), path[-1]
        parent[last] = MARKER
    elif field.kind == "key":
        parent, last = _get(doc, path[:-1]), path[-1]
        # Renamed in place: the order of the keys (and so the lines) stays.
        items = [(MARKER if k == last else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)
    else:
        _get(doc, path)[MARKER] = "x"
    text = yaml.dump(doc, Dumper=DUMPER, sort_keys=False, width=10**6, allow_unicode=True)
    line = next(n for n, raw in enumerate(text.splitlines(), 1) if MARKER in raw)
    return Template(field, file, text, line)


def base_value(field: Field, file: str, path: tuple[Any, ...]) -> str:
    if field.kind == "value":
        return str(_get(BASE[file], path))
    if field.kind == "key":
        return str(path[-1])
    return "extra"


def base_files() -> dict[str, str]:
    return {
        name: yaml.dump(doc, Dumper=DUMPER, sort_keys=False, width=10**6, allow_unicode=True)
        for name, doc in BASE.items()
    }
