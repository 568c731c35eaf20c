"""Manifests: load, validate (schema + semantic rules) and resolve one environment.

``load_manifests`` reads every manifest file of a commit and reports *all* problems of
the repository at once (``ManifestError``). ``resolve`` turns the validated documents and
one environment's overrides into a frozen ``DesiredState``. Nothing here does I/O beyond
the bytes handed in.

The rules that hold whatever the environment are in ``desired.checks``; one Service and
one LoadBalancer are resolved (and checked for the environment) in ``desired.service``
and ``desired.loadbalancer``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.desired import trust
from reconciler.desired.checks import add_unique, check_repository
from reconciler.desired.coordination import check_modes, coordination, index_modes
from reconciler.desired.loadbalancer import check_lb_hosts_and_ports, loadbalancer
from reconciler.desired.loader import MAX_FILE_BYTES, At, Document, load_yaml
from reconciler.desired.schema import check_document
from reconciler.desired.service import service
from reconciler.desired.units import duration_ms
from reconciler.errors import ManifestError, Problem, ReconcilerError
from reconciler.model import DesiredState, Host, Rollout, Service, SshConnection

if TYPE_CHECKING:
    from reconciler.desired.policy import Policy
    from reconciler.desired.schemamemo import SchemaMemo

DEFAULT_ENVIRONMENT = "default"
MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass
class Manifests:
    """The valid documents of a repository, indexed by kind and name."""

    services: dict[str, Document] = field(default_factory=dict)
    loadbalancers: dict[str, Document] = field(default_factory=dict)
    environments: dict[str, Document] = field(default_factory=dict)
    hosts: dict[str, At] = field(default_factory=dict)
    modes: dict[str, At] = field(default_factory=dict)  # environment -> its mode (Inventory)
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


def load_manifests(
    files: Iterable[tuple[str, bytes]], memo: SchemaMemo | None = None
) -> Manifests:
    """Parse, schema-check and semantically check every file; raise with all problems.
    A file ``memo`` says passed the schema check before is not checked again; the files
    that pass now are noted in it (the caller saves it)."""
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
        known = memo is not None and not found and memo.passed(raw)
        passed = not found
        for doc in parsed:
            schema_problems = [] if known else check_document(doc)
            problems += schema_problems
            if not schema_problems:
                docs.append(doc)
            else:
                passed = False
                broken |= _declared_names(doc)
        if memo is not None and passed and not known:
            memo.remember([raw])
    m = _index(docs, problems)
    m.broken = broken
    m.unparsed = unparsed
    problems += check_repository(m)
    problems += check_modes(m)
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
                add_unique(m.hosts, host["name"], at, "host", problems)
            index_modes(doc, m.modes, problems)
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
        svc = service(doc, env_doc, env_data, env_name, check_hosts, problems)
        if svc is not None:
            services[name] = svc

    lbs = [
        loadbalancer(doc, env_doc, env_data, env_name, services, m, check_hosts, problems)
        for _, doc in sorted(m.loadbalancers.items())
    ]
    check_lb_hosts_and_ports(lbs, env_name, problems)
    if policy is not None:
        problems += trust.check_environment(m, env_name, env_doc, list(services), policy)
    if len(problems) > start:
        return None
    used = {h for s in services.values() for h in s.hosts}
    used |= {h for lb, _ in lbs for h in lb.hosts}
    return DesiredState(
        environment=env_name,
        commit=commit,
        hosts=tuple(hosts[h] for h in sorted(used) if h in hosts),
        services=tuple(services.values()),
        loadbalancers=tuple(lb for lb, _ in lbs),
        rollout=_rollout(env_data.get("rollout", {})),
        coordination=coordination(m, env_name),
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


def manifest_files(paths: Iterable[str]) -> list[str]:
    """The manifest files among ``paths`` (YAML files outside hidden folders)."""
    return sorted(
        p
        for p in paths
        if p.endswith(MANIFEST_SUFFIXES) and not any(part.startswith(".") for part in p.split("/"))
    )
