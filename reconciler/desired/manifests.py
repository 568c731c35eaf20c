"""Manifests: load, validate (schema + semantic rules) and resolve one environment.

``load_manifests`` reads every manifest file of a commit and reports *all* problems of
the repository at once (``ManifestError``). ``resolve`` turns the validated documents and
one environment's overrides into a frozen ``DesiredState``. Nothing here does I/O beyond
the bytes handed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.desired import imageref, safety, trust
from reconciler.desired.loader import MAX_FILE_BYTES, Document, Path, load_yaml
from reconciler.desired.schema import check_document
from reconciler.desired.units import duration_ms, memory_bytes
from reconciler.errors import ManifestError, Problem, ReconcilerError
from reconciler.model import (
    CanaryPolicy,
    CanaryStep,
    ContainerSpec,
    DesiredState,
    Frontend,
    HealthCheck,
    Host,
    LoadBalancer,
    Logging,
    Release,
    Rollout,
    Route,
    SecretRef,
    Service,
    SshConnection,
    Timeouts,
    Volume,
)

if TYPE_CHECKING:
    from reconciler.desired.policy import Policy

DEFAULT_ENVIRONMENT = "default"
HOSTS_KEY = "#hosts"  # where an LB's hosts came from, beside its frontends' binds
MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class At:
    """Where a value came from: a document and a path in it."""

    doc: Document
    path: Path

    def problem(self, message: str, *sub: str | int, key: bool = False) -> Problem:
        return self.doc.problem((*self.path, *sub), message, key=key)


@dataclass
class Manifests:
    """The valid documents of a repository, indexed by kind and name."""

    services: dict[str, Document] = field(default_factory=dict)
    loadbalancers: dict[str, Document] = field(default_factory=dict)
    environments: dict[str, Document] = field(default_factory=dict)
    hosts: dict[str, At] = field(default_factory=dict)
    # (kind, name) of documents that failed their schema: references to them are not
    # reported again as unknown (one mistake, one error).
    broken: set[tuple[str, str]] = field(default_factory=set)
    unparsed: list[str] = field(default_factory=list)  # files that are not valid YAML

    def known(self, kind: str, name: str) -> bool:
        tables: dict[str, dict[str, Any]] = {
            "Service": self.services,
            "LoadBalancer": self.loadbalancers,
            "Host": self.hosts,
        }
        return name in tables[kind] or (kind, name) in self.broken

    def unknown(self, what: str, name: str) -> str:
        """The message for a reference to nothing; hints at files that did not parse."""
        hint = f" (unless it is in {', '.join(self.unparsed)}, which is not valid YAML)"
        return f"unknown {what} {name!r}" + (hint if self.unparsed else "")

    def environment_names(self) -> list[str]:
        """Declared environments; the implicit 'default' only when none is declared (not
        even by a document that failed its schema)."""
        if (
            self.environments
            or any(kind == "Environment" for kind, _ in self.broken)
            or self.unparsed
        ):
            return sorted(self.environments)
        return [DEFAULT_ENVIRONMENT]


# --------------------------------------------------------------------------- loading


def load_manifests(files: Iterable[tuple[str, bytes]]) -> Manifests:
    """Parse, schema-check and semantically check every file; raise with all problems."""
    problems: list[Problem] = []
    docs: list[Document] = []
    broken: set[tuple[str, str]] = set()
    unparsed: list[str] = []
    for name, raw in sorted(files):
        if len(raw) > MAX_FILE_BYTES:
            problems.append(
                Problem(
                    name,
                    1,
                    1,
                    "",
                    f"file is {len(raw)} bytes, more than the {MAX_FILE_BYTES} a manifest "
                    "may have; refused",
                )
            )
            unparsed.append(name)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(name, 1, 1, "", f"not UTF-8 text ({exc.reason})"))
            continue
        parsed, found = load_yaml(name, text)
        problems += found
        if found:
            unparsed.append(name)
        for doc in parsed:
            schema_problems = check_document(doc)
            problems += schema_problems
            if not schema_problems:
                docs.append(doc)
            else:
                broken |= _declared_names(doc)
    m = _index(docs, problems)
    m.broken = broken
    m.unparsed = unparsed
    problems += _check_repository(m)
    for env in m.environment_names():
        _resolve(m, env, "", problems)
    if problems:
        raise ManifestError(list(set(problems)))
    return m


def _declared_names(doc: Document) -> set[tuple[str, str]]:
    """What a document that failed its schema still declares, as far as can be told."""
    data = doc.data if isinstance(doc.data, dict) else {}
    kind, name = data.get("kind"), data.get("name")
    found = {(kind, name)} if isinstance(kind, str) and isinstance(name, str) else set()
    hosts = data.get("hosts") if kind == "Inventory" else None
    for host in hosts if isinstance(hosts, list) else []:
        if isinstance(host, dict) and isinstance(host.get("name"), str):
            found.add(("Host", host["name"]))
    return found


def _index(docs: list[Document], problems: list[Problem]) -> Manifests:
    m = Manifests()
    tables: dict[str, dict[str, Document]] = {
        "Service": m.services,
        "LoadBalancer": m.loadbalancers,
        "Environment": m.environments,
    }
    for doc in docs:
        kind = doc.data["kind"]
        if kind == "Inventory":
            for i, host in enumerate(doc.data["hosts"]):
                at = At(doc, ("hosts", i))
                _add_unique(m.hosts, host["name"], at, "host", problems)
            continue
        name = doc.data["name"]
        table = tables[kind]
        if name in table:
            first = table[name]
            problems.append(
                doc.problem(
                    ("name",),
                    f"duplicate {kind} name {name!r} (first defined in {first.file}:"
                    f"{first.where(('name',))[0]})",
                )
            )
        else:
            table[name] = doc
    return m


def _add_unique(
    table: dict[str, At], name: str, at: At, what: str, problems: list[Problem]
) -> None:
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


# --------------------------------------------------------------------------- checks


def _check_repository(m: Manifests) -> list[Problem]:
    """Rules that do not depend on the environment."""
    problems: list[Problem] = []
    frontends: dict[str, At] = {}
    for doc in m.loadbalancers.values():
        for i, fe in enumerate(doc.data["frontends"]):
            _add_unique(frontends, fe["name"], At(doc, ("frontends", i)), "frontend", problems)
    for doc in m.services.values():
        problems += _check_service_values(doc)
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
    for doc in m.environments.values():
        for name, override in doc.data.get("services", {}).items():
            _check_env_values(doc, ("services", name, "env"), override.get("env", {}), problems)
            _check_releases(
                doc, ("services", name, "releases"), override.get("releases", []), problems
            )
            if not m.known("Service", name):
                problems.append(
                    doc.problem(("services", name), m.unknown("service", name), key=True)
                )
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
    for key, value in env.items():
        if isinstance(value, str) and (why := safety.control_chars(value)):
            problems.append(doc.problem((*path, key), f"value of {key} {why}"))


# --------------------------------------------------------------------------- resolving


def resolve(
    m: Manifests, environment: str, commit: str, policy: Policy | None = None
) -> DesiredState:
    """The desired state of ``environment``; raises if it does not exist or is invalid.

    With the operator's ``policy`` (every command that acts on hosts, and ``validate``),
    what the manifests ask for is also checked against it (``reconciler.desired.trust``: bind
    mounts, secret sources, SSH hosts), every violation a problem with file:line, and
    SSH hosts get the policy's trust settings. Without one (``diff``, format checks)
    only the manifest rules apply."""
    if environment not in m.environment_names():
        known = ", ".join(m.environment_names())
        raise ReconcilerError(f"unknown environment {environment!r} (known: {known})")
    problems: list[Problem] = []
    state = _resolve(m, environment, commit, problems, policy)
    if problems or state is None:
        raise ManifestError(problems)
    return state


def _seconds(duration: str) -> int:
    """Whole seconds, rounded up (Docker and the drain loop count in seconds)."""
    return -(-duration_ms(duration) // 1000)


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _resolve(
    m: Manifests,
    env_name: str,
    commit: str,
    problems: list[Problem],
    policy: Policy | None = None,
) -> DesiredState | None:
    """Resolve one environment, appending its problems; None when any were found."""
    start = len(problems)
    env_doc = m.environments.get(env_name)
    env_data: dict[str, Any] = env_doc.data if env_doc else {}
    hosts = {name: _host(at) for name, at in m.hosts.items()}
    if policy is not None:
        hosts = {name: trust.trusted_host(h, policy) for name, h in hosts.items()}

    def check_hosts(names: list[str], at: At, role: str, what: str) -> None:
        for i, h in enumerate(names):
            if h not in hosts:
                if not m.known("Host", h):
                    problems.append(at.problem(m.unknown("host", h), i))
            elif role not in hosts[h].roles:
                problems.append(
                    at.problem(f"host {h!r} does not have role {role!r} needed to run {what}", i)
                )

    services: dict[str, Service] = {}
    for name, doc in sorted(m.services.items()):
        svc = _service(doc, env_doc, env_data, env_name, check_hosts, problems)
        if svc is not None:
            services[name] = svc

    lbs = [
        _loadbalancer(doc, env_doc, env_data, env_name, services, m, check_hosts, problems)
        for _, doc in sorted(m.loadbalancers.items())
    ]
    _check_lb_hosts_and_ports([lb for lb in lbs if lb], env_name, problems)
    if policy is not None:
        problems += trust.check_environment(m, env_name, env_doc, list(services), policy)
    if len(problems) > start:
        return None
    used = {h for s in services.values() for h in s.hosts}
    used |= {h for lb in lbs if lb for h in lb[0].hosts}
    return DesiredState(
        environment=env_name,
        commit=commit,
        hosts=tuple(hosts[h] for h in sorted(used) if h in hosts),
        services=tuple(services.values()),
        loadbalancers=tuple(lb[0] for lb in lbs if lb),
        rollout=_rollout(env_data.get("rollout", {})),
    )


def _canary(data: dict[str, Any]) -> CanaryPolicy:
    analysis = data.get("analysis", {})
    return CanaryPolicy(
        steps=tuple(
            CanaryStep(
                weight=s["weight"],
                min_duration_ms=duration_ms(s.get("min_duration", "1m")),
                min_requests=s.get("min_requests", 100),
            )
            for s in data["steps"]
        ),
        confidence=float(analysis.get("confidence", 0.99)),
        max_error_rate=float(analysis.get("max_error_rate", 0.05)),
        interval_ms=duration_ms(analysis.get("interval", "10s")),
    )


def _rollout(data: dict[str, Any]) -> Rollout:
    return Rollout(
        limit=data.get("limit"),
        wait_ms=duration_ms(data.get("wait", "0s")),
        concurrency=data.get("concurrency", 8),
        on_failure=data.get("on_failure", "stop"),
    )


def _host(at: At) -> Host:
    data = at.doc.get(at.path)
    conn = data.get("connection", "local")
    ssh = None
    if isinstance(conn, dict):
        s = conn["ssh"]
        ssh = SshConnection(
            user=s["user"],
            port=s.get("port", 22),
            key=s.get("key"),
            known_hosts=s.get("known_hosts"),
            host_key_checking=s.get("host_key_checking", "strict"),
            docker_socket=s.get("docker_socket"),
            state_dir=s.get("state_dir", "/var/lib/reconciler"),
        )
    return Host(name=data["name"], address=data["address"], roles=tuple(data["roles"]), ssh=ssh)


def _service(
    doc: Document,
    env_doc: Document | None,
    env_data: dict[str, Any],
    env_name: str,
    check_hosts: Callable[[list[str], At, str, str], None],
    problems: list[Problem],
) -> Service | None:
    data = doc.data
    name = data["name"]
    override = env_data.get("services", {}).get(name, {})
    opath: Path = ("services", name)
    if not override.get("enabled", True):
        return None
    in_env = f" in environment {env_name!r}"

    def pick(key: str) -> tuple[Any, At]:
        if key in override and env_doc is not None:
            return override[key], At(env_doc, (*opath, key))
        return data.get(key), At(doc, (key,))

    host_names, hosts_at = pick("hosts")
    if host_names is None:
        hosts_at = At(doc, ("name",))
    host_names = host_names or []
    if not host_names:
        problems.append(
            hosts_at.problem(
                f"service {name!r} has no hosts{in_env} (list hosts, "
                "or set enabled: false in the environment)"
            )
        )
    check_hosts(host_names, hosts_at, "app", f"service {name!r}")

    releases_data, rel_at = pick("releases")
    revisions: set[str] = set()
    for i, rel in enumerate(releases_data):
        if rel["revision"] in revisions:
            problems.append(
                rel_at.problem(f"duplicate revision {rel['revision']!r}", i, "revision")
            )
        revisions.add(rel["revision"])
    total = sum(r["weight"] for r in releases_data)
    # The service's own releases: one report, not one per environment.
    weights_env = "" if rel_at.doc is doc else in_env
    if total != 100:
        weights = " + ".join(str(r["weight"]) for r in releases_data)
        problems.append(
            rel_at.problem(
                f"weights of service {name!r} add up to {total} "
                f"({weights}){weights_env}; they must add up to 100"
            )
        )

    canaries = [i for i, r in enumerate(releases_data) if "canary" in r]
    if canaries:
        i = canaries[0]
        others = [r for r in releases_data if "canary" not in r]
        steps = [s["weight"] for s in releases_data[i]["canary"]["steps"]]
        if len(canaries) > 1 or len(others) != 1:
            problems.append(
                rel_at.problem(
                    "a canary is judged against one baseline: a service with a canary "
                    "release needs exactly one other release",
                    i,
                    "canary",
                )
            )
        elif releases_data[i]["weight"] != 0:
            problems.append(
                rel_at.problem(
                    f"a canary release starts at weight 0 (its steps move it; 0 is where "
                    f"it returns on abort), not {releases_data[i]['weight']}",
                    i,
                    "weight",
                )
            )
        if steps != sorted(set(steps)):
            problems.append(
                rel_at.problem(f"canary step weights must increase: {steps}", i, "canary")
            )

    declared = env_data.get("secrets", {})
    secrets = []
    for i, secret in enumerate(data.get("secrets", [])):
        if secret not in declared:
            where = env_doc.file if env_doc else "an Environment manifest"
            problems.append(
                doc.problem(
                    ("secrets", i),
                    f"secret {secret!r} is not declared{in_env} (add it under secrets: in {where})",
                )
            )
            continue
        d = declared[secret]
        secrets.append(
            SecretRef(
                name=secret,
                source="file" if "file" in d else "env",
                location=d.get("file") or d["env"],
                version=str(d.get("version", "")),
            )
        )

    env = {**data.get("env", {}), **override.get("env", {})}
    replicas = override.get("replicas", data.get("replicas", 1))
    lb = data.get("loadbalancing", {})
    t = lb.get("timeouts", {})
    releases = tuple(
        Release(
            revision=r["revision"],
            weight=r["weight"],
            spec=_spec(data, r, {**env, **r.get("env", {})}, tuple(secrets)),
            canary=_canary(r["canary"]) if "canary" in r else None,
        )
        for r in releases_data
    )
    return Service(
        name=name,
        releases=releases,
        replicas=replicas,
        hosts=tuple(sorted(host_names)),
        balance=lb.get("balance", "roundrobin"),
        timeouts=Timeouts(
            connect_ms=duration_ms(t.get("connect", "5s")),
            server_ms=duration_ms(t.get("server", "30s")),
            queue_ms=duration_ms(t.get("queue", "30s")),
        ),
        drain_timeout_s=_seconds(lb.get("drain_timeout", "30s")),
    )


def _spec(
    data: dict[str, Any], rel: dict[str, Any], env: dict[str, Any], secrets: tuple[SecretRef, ...]
) -> ContainerSpec:
    health = data.get("health")
    if health is None:
        check = HealthCheck(kind="none")
    else:
        check = HealthCheck(
            kind="command" if "command" in health else "http",
            path=health.get("http", "/"),
            command=tuple(health.get("command", ())),
            interval_ms=duration_ms(health.get("interval", "2s")),
            timeout_ms=duration_ms(health.get("timeout", "1s")),
            retries=health.get("retries", 3),
            start_period_ms=duration_ms(health.get("start_period", "0s")),
        )
    logging = None
    if "logging" in data:
        options = dict(data["logging"].get("options", {}))
        if data["logging"]["driver"] == "syslog":
            # Docker fills {{.ID}} in: each line says service, revision and container.
            options.setdefault("tag", f"{data['name']}/{rel['revision']}/{{{{.ID}}}}")
        logging = Logging(driver=data["logging"]["driver"], options=tuple(sorted(options.items())))
    res = data.get("resources", {})
    cmd, args = data.get("command"), data.get("args")
    return ContainerSpec(
        image=rel.get("image") or f"{data['image']}:{rel['revision']}",
        port=data["port"],
        command=tuple(cmd) if cmd is not None else None,
        args=tuple(args) if args is not None else None,
        env=tuple(sorted((k, _env_text(v)) for k, v in env.items())),
        secrets=secrets,
        health=check,
        volumes=tuple(
            Volume(
                type=v["type"],
                source=v["source"],
                target=v["target"],
                read_only=v.get("read_only", False),
            )
            for v in data.get("volumes", [])
        ),
        memory_bytes=memory_bytes(res["memory"]) if "memory" in res else None,
        nano_cpus=round(res["cpus"] * 1e9) if "cpus" in res else None,
        restart=data.get("restart", "unless-stopped"),
        logging=logging,
        labels=tuple(sorted(data.get("labels", {}).items())),
        stop_grace_s=_seconds(data.get("stop_grace_period", "10s")),
    )


def _loadbalancer(
    doc: Document,
    env_doc: Document | None,
    env_data: dict[str, Any],
    env_name: str,
    services: dict[str, Service],
    m: Manifests,
    check_hosts: Callable[[list[str], At, str, str], None],
    problems: list[Problem],
) -> tuple[LoadBalancer, dict[str, At]] | None:
    """The LB with its frontends resolved, and where each frontend's bind came from."""
    data = doc.data
    name = data["name"]
    override = env_data.get("loadbalancers", {}).get(name, {})
    opath: Path = ("loadbalancers", name)
    if "hosts" in override and env_doc is not None:
        host_names, hosts_at = override["hosts"], At(env_doc, (*opath, "hosts"))
    else:
        host_names, hosts_at = data["hosts"], At(doc, ("hosts",))
    check_hosts(host_names, hosts_at, "lb", f"load balancer {name!r}")
    in_env = f" in environment {env_name!r}"
    frontends = []
    bind_at: dict[str, At] = {}
    has_tls = any(
        "tls" in {**fe, **override.get("frontends", {}).get(fe["name"], {})}
        for fe in data["frontends"]
    )
    for i, base in enumerate(data["frontends"]):
        fe_over = override.get("frontends", {}).get(base["name"], {})
        fe = {**base, **fe_over}

        def at(
            key: str, fe_over: dict[str, Any] = fe_over, i: int = i, base_name: str = base["name"]
        ) -> At:
            if key in fe_over and env_doc is not None:
                return At(env_doc, (*opath, "frontends", base_name, key))
            return At(doc, ("frontends", i, key))

        for j, route in enumerate(fe.get("routes", [])):
            _check_service_ref(
                route["service"],
                services,
                m,
                At(doc, ("frontends", i, "routes", j, "service")),
                in_env,
                problems,
            )
            if "path_prefix" in route and (why := safety.path_prefix(route["path_prefix"])):
                problems.append(
                    doc.problem(
                        ("frontends", i, "routes", j, "path_prefix"),
                        f"{route['path_prefix']!r} {why}",
                    )
                )
        if "default_service" in fe:
            _check_service_ref(
                fe["default_service"], services, m, at("default_service"), in_env, problems
            )
        elif not fe.get("routes") and not fe.get("redirect_https"):
            problems.append(
                At(doc, ("frontends", i)).problem(
                    f"frontend {fe['name']!r} has no routes and no default_service"
                )
            )
        cert = fe.get("tls", {}).get("certificate")
        if cert is not None and (why := safety.absolute_path(cert, haproxy=True)):
            problems.append(at("tls").problem(f"{cert!r} {why}", "certificate"))
        if fe.get("redirect_https"):
            if "tls" in fe:
                problems.append(
                    at("redirect_https").problem(
                        "redirect_https on a TLS frontend would redirect to itself"
                    )
                )
            elif not has_tls:
                problems.append(
                    at("redirect_https").problem(
                        f"redirect_https needs a frontend with tls in load balancer {name!r}"
                    )
                )
        address, _, port = fe["bind"].rpartition(":")
        if why := safety.ipv4_if_numeric(address):
            problems.append(at("bind").problem(f"{fe['bind']!r}: {address} {why}"))
        if not 1 <= int(port) <= 65535:
            problems.append(at("bind").problem(f"{fe['bind']!r} has port {port} outside 1-65535"))
        bind_at[fe["name"]] = at("bind")
        frontends.append(
            Frontend(
                name=fe["name"],
                bind_address=address or "*",
                bind_port=int(port),
                routes=tuple(
                    Route(
                        service=r["service"], host=r.get("host"), path_prefix=r.get("path_prefix")
                    )
                    for r in fe.get("routes", [])
                ),
                default_service=fe.get("default_service"),
                tls_certificate=cert,
                redirect_https=fe.get("redirect_https", False),
                client_timeout_ms=duration_ms(fe.get("client_timeout", "30s")),
            )
        )
    lb = LoadBalancer(name=name, hosts=tuple(sorted(host_names)), frontends=tuple(frontends))
    bind_at[HOSTS_KEY] = hosts_at
    return lb, bind_at


def _check_service_ref(
    name: str,
    services: dict[str, Service],
    m: Manifests,
    at: At,
    in_env: str,
    problems: list[Problem],
) -> None:
    if not m.known("Service", name):
        problems.append(at.problem(m.unknown("service", name)))
    elif name not in services and name in m.services:
        problems.append(at.problem(f"routes to service {name!r}, which is disabled{in_env}"))


def _check_lb_hosts_and_ports(
    lbs: list[tuple[LoadBalancer, dict[str, At]]], env_name: str, problems: list[Problem]
) -> None:
    """One LB per host; no two frontends of a host bind overlapping address:port."""
    owner: dict[str, str] = {}
    binds: dict[tuple[str, int], list[tuple[str, str, At]]] = defaultdict(list)
    for lb, bind_at in lbs:
        for host in lb.hosts:
            if host in owner:
                problems.append(
                    bind_at[HOSTS_KEY].problem(
                        f"host {host!r} runs both load balancers {owner[host]!r} and {lb.name!r} "
                        f"in environment {env_name!r}; one HAProxy per host"
                    )
                )
            owner[host] = lb.name
            for fe in lb.frontends:
                for addr, other, other_at in binds[(host, fe.bind_port)]:
                    wildcard = {"*", "0.0.0.0"}  # noqa: S104 - the wildcard, not a bind
                    if wildcard & {addr, fe.bind_address} or addr == fe.bind_address:
                        problems.append(
                            bind_at[fe.name].problem(
                                f"{fe.bind_address}:{fe.bind_port} clashes with frontend {other!r} "
                                f"({other_at.doc.file}:{other_at.doc.where(other_at.path)[0]}) on "
                                f"host {host!r} in environment {env_name!r}"
                            )
                        )
                binds[(host, fe.bind_port)].append((fe.bind_address, fe.name, bind_at[fe.name]))


def manifest_files(paths: Iterable[str]) -> list[str]:
    """The manifest files among ``paths`` (YAML files outside hidden folders)."""
    return sorted(
        p
        for p in paths
        if p.endswith(MANIFEST_SUFFIXES) and not any(part.startswith(".") for part in p.split("/"))
    )
