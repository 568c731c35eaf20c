"""Repository rules: the semantic checks of ``load_manifests`` that hold whatever the
environment (unique frontend names, safe values of every Service, hosts' addresses and
local connections, what Environment manifests override and declare).

Pure: documents in, problems (file:line:column: field: message) out, every problem of
the repository at once. The rules that depend on an environment run when it is resolved
(``desired.service``, ``desired.loadbalancer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reconciler.desired import imageref, safety
from reconciler.desired.loader import At, Document, Path
from reconciler.errors import Problem

if TYPE_CHECKING:
    from reconciler.desired.manifests import Manifests


def check_repository(m: Manifests) -> list[Problem]:
    """Rules that do not depend on the environment."""
    problems: list[Problem] = []
    frontends: dict[str, At] = {}
    for doc in m.loadbalancers.values():
        for i, fe in enumerate(doc.data["frontends"]):
            add_unique(frontends, fe["name"], At(doc, ("frontends", i)), "frontend", problems)
    for doc in m.services.values():
        problems += _check_service_values(doc)
    problems += _check_hosts(m)
    for doc in m.environments.values():
        problems += _check_environment(m, doc)
    return problems


def add_unique(table: dict[str, At], name: str, at: At, what: str, problems: list[Problem]) -> None:
    """Add ``at`` under ``name``, or report a duplicate pointing at the first one."""
    if name in table:
        first = table[name]
        line, _ = first.doc.where((*first.path, "name"))
        problems.append(
            at.problem(
                f"duplicate {what} name {name!r} (first defined in {first.doc.file}:{line})", "name"
            )
        )
    else:
        table[name] = at


def _check_hosts(m: Manifests) -> list[Problem]:
    """Hosts' addresses and key files; at most one local host, with an IPv4 address."""
    problems: list[Problem] = []
    local: list[At] = []
    for at in m.hosts.values():
        address = at.doc.get((*at.path, "address"))
        if why := safety.ipv4_if_numeric(address):
            problems.append(at.problem(f"{address!r} {why}", "address"))
        for name in ("key", "known_hosts"):
            sub = ("connection", "ssh", name)
            path = at.doc.get((*at.path, *sub))
            if isinstance(path, str) and (why := safety.local_file(path)):
                problems.append(at.problem(f"{path!r} {why}", *sub))
        if at.doc.get((*at.path, "connection"), "local") == "local":
            local.append(at)
            if not address.replace(".", "").isdigit():
                problems.append(
                    at.problem(
                        f"{address!r}: a local host needs an IPv4 address (containers publish "
                        "their ports on it)",
                        "address",
                    )
                )
    for at in local[1:]:
        first = local[0]
        problems.append(
            at.problem(
                f"a second local host (the first is {first.doc.get((*first.path, 'name'))!r} at "
                f"{first.doc.file}:{first.doc.where(first.path)[0]}): both would be the same "
                "Docker engine",
                "connection",
            )
        )
    return problems


def _check_environment(m: Manifests, doc: Document) -> list[Problem]:
    """An Environment's service overrides (values, known services), load balancer
    overrides (known load balancers and frontends) and secret files."""
    problems: list[Problem] = []
    for name, override in doc.data.get("services", {}).items():
        _check_env_values(doc, ("services", name, "env"), override.get("env", {}), problems)
        _check_releases(doc, ("services", name, "releases"), override.get("releases", []), problems)
        if not m.known("Service", name):
            problems.append(doc.problem(("services", name), m.unknown("service", name), key=True))
    for name, override in doc.data.get("loadbalancers", {}).items():
        lb = m.loadbalancers.get(name)
        if lb is None and m.known("LoadBalancer", name):
            continue
        if lb is None:
            problems.append(
                doc.problem(("loadbalancers", name), m.unknown("load balancer", name), key=True)
            )
            continue
        known = {fe["name"] for fe in lb.data["frontends"]}
        for fe in override.get("frontends", {}):
            if fe not in known:
                problems.append(
                    doc.problem(
                        ("loadbalancers", name, "frontends", fe),
                        f"unknown frontend {fe!r} of load balancer {name!r}",
                        key=True,
                    )
                )
    for name, secret in doc.data.get("secrets", {}).items():
        if "file" in secret and (why := safety.absolute_path(secret["file"])):
            problems.append(doc.problem(("secrets", name, "file"), f"{secret['file']!r} {why}"))
    return problems


def _check_service_values(doc: Document) -> list[Problem]:
    """Safety of every value of a Service that reaches Docker or a label."""
    data = doc.data
    problems: list[Problem] = []

    def bad(path: Path, value: str, why: str | None) -> None:
        if why:
            problems.append(doc.problem(path, f"{value!r} {why}"))

    image = data["image"]
    last = image.rsplit("/", 1)[-1]
    if ":" in last or "@" in last:
        bad(
            ("image",),
            image,
            "names a tag or digest: give the repository only (the tag is "
            "the release revision) or set releases[].image",
        )
    else:  # with the revision as its tag (at most 64 characters) it stays valid
        bad(("image",), image, imageref.problem(image))
    _check_env_values(doc, ("env",), data.get("env", {}), problems)
    _check_releases(doc, ("releases",), data["releases"], problems)
    for field_name in ("command", "args"):
        for i, arg in enumerate(data.get(field_name, [])):
            bad((field_name, i), arg, safety.control_chars(arg))
    for i, arg in enumerate(data.get("health", {}).get("command", [])):
        bad(("health", "command", i), arg, safety.control_chars(arg))
    http = data.get("health", {}).get("http")
    if http is not None:
        bad(("health", "http"), http, safety.path_prefix(http))
    for key, value in data.get("labels", {}).items():
        if why := safety.label_key(key):
            problems.append(doc.problem(("labels", key), f"label key {key!r} {why}", key=True))
        bad(("labels", key), value, safety.control_chars(value))
    for key, value in data.get("logging", {}).get("options", {}).items():
        if why := safety.log_option_key(key):
            problems.append(doc.problem(("logging", "options", key), f"{key!r} {why}", key=True))
        bad(("logging", "options", key), value, safety.control_chars(value))
    for i, vol in enumerate(data.get("volumes", [])):
        src = vol["source"]
        src_why = safety.absolute_path(src) if vol["type"] == "bind" else safety.volume_name(src)
        bad(("volumes", i, "source"), src, src_why)
        bad(("volumes", i, "target"), vol["target"], safety.absolute_path(vol["target"]))
    return problems


def _check_releases(
    doc: Document, path: Path, releases: list[dict[str, Any]], problems: list[Problem]
) -> None:
    """A release list (of a Service or an Environment): env values and images."""
    for i, rel in enumerate(releases):
        _check_env_values(doc, (*path, i, "env"), rel.get("env", {}), problems)
        if "image" in rel and (why := imageref.problem(rel["image"])):
            problems.append(doc.problem((*path, i, "image"), f"{rel['image']!r} {why}"))


def _check_env_values(
    doc: Document, path: Path, env: dict[str, Any], problems: list[Problem]
) -> None:
    """Env values (of a Service, an override or a release) hold no control characters."""
    for key, value in env.items():
        if isinstance(value, str) and (why := safety.control_chars(value)):
            problems.append(doc.problem((*path, key), f"value of {key} {why}"))
