"""One Service of one environment: the Service manifest with the Environment's override
applied, checked against the rules that depend on the environment (hosts, release
weights, canaries, declared secrets), and turned into a frozen ``model.Service``.

Pure. Problems are appended to the caller's list, each naming the file, line and field
where the value came from (the Service manifest, or the Environment that overrode it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.desired.loader import At, Document
from reconciler.desired.units import duration_ms, memory_bytes
from reconciler.errors import Problem
from reconciler.health import NO_HEALTH, read_health
from reconciler.model import (
    ActionSpec,
    CanaryPolicy,
    CanaryStep,
    ContainerSpec,
    HealthCheck,
    LatencyPolicy,
    Logging,
    Release,
    SecretRef,
    Service,
    Timeouts,
    Volume,
)

# check_hosts(names, where they came from, role they need, what needs it)
HostCheck = Callable[[list[str], At, str, str], None]


def service(
    doc: Document,
    env_doc: Document | None,
    env_data: dict[str, Any],
    env_name: str,
    check_hosts: HostCheck,
    problems: list[Problem],
) -> Service | None:
    """The Service of ``doc`` in environment ``env_name`` (``env_data``, from ``env_doc``
    when it has a manifest); None when the environment disables it. Problems are
    appended to ``problems``; a Service is returned even then (the caller counts them)."""
    data = doc.data
    name = data["name"]
    override = env_data.get("services", {}).get(name, {})
    if not override.get("enabled", True):
        return None
    in_env = f" in environment {env_name!r}"
    host_names, hosts_at = _pick("hosts", doc, override, env_doc)
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
    releases_data, rel_at = _pick("releases", doc, override, env_doc)
    # The service's own releases: one report, not one per environment.
    _check_releases(name, releases_data, rel_at, "" if rel_at.doc is doc else in_env, problems)
    _check_canary(releases_data, rel_at, problems)
    secrets = _secrets(doc, env_doc, env_data, in_env, problems)
    return _build(data, override, releases_data, tuple(sorted(host_names)), secrets)


def _pick(
    key: str, doc: Document, override: dict[str, Any], env_doc: Document | None
) -> tuple[Any, At]:
    """The value of ``key`` and where it came from: the override, else the Service."""
    if key in override and env_doc is not None:
        return override[key], At(env_doc, ("services", doc.data["name"], key))
    return doc.data.get(key), At(doc, (key,))


def _check_releases(
    name: str,
    releases: list[dict[str, Any]],
    at: At,
    in_env: str,
    problems: list[Problem],
) -> None:
    """Revisions are unique and weights add up to 100."""
    revisions: set[str] = set()
    for i, rel in enumerate(releases):
        if rel["revision"] in revisions:
            problems.append(at.problem(f"duplicate revision {rel['revision']!r}", i, "revision"))
        revisions.add(rel["revision"])
    total = sum(r["weight"] for r in releases)
    if total != 100:
        weights = " + ".join(str(r["weight"]) for r in releases)
        problems.append(
            at.problem(
                f"weights of service {name!r} add up to {total} "
                f"({weights}){in_env}; they must add up to 100"
            )
        )


def _check_canary(releases: list[dict[str, Any]], at: At, problems: list[Problem]) -> None:
    """A canary release (the first, if several) has exactly one baseline, starts at
    weight 0 and has increasing steps."""
    canaries = [i for i, r in enumerate(releases) if "canary" in r]
    if not canaries:
        return
    i = canaries[0]
    others = [r for r in releases if "canary" not in r]
    steps = [s["weight"] for s in releases[i]["canary"]["steps"]]
    if len(canaries) > 1 or len(others) != 1:
        problems.append(
            at.problem(
                "a canary is judged against one baseline: a service with a canary "
                "release needs exactly one other release",
                i,
                "canary",
            )
        )
    elif releases[i]["weight"] != 0:
        problems.append(
            at.problem(
                f"a canary release starts at weight 0 (its steps move it; 0 is where "
                f"it returns on abort), not {releases[i]['weight']}",
                i,
                "weight",
            )
        )
    if steps != sorted(set(steps)):
        problems.append(at.problem(f"canary step weights must increase: {steps}", i, "canary"))


def _secrets(
    doc: Document,
    env_doc: Document | None,
    env_data: dict[str, Any],
    in_env: str,
    problems: list[Problem],
) -> tuple[SecretRef, ...]:
    """The Service's secrets as the environment declares them; an undeclared one is a
    problem (and left out)."""
    declared = env_data.get("secrets", {})
    secrets = []
    for i, secret in enumerate(doc.data.get("secrets", [])):
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
    return tuple(secrets)


def _build(
    data: dict[str, Any],
    override: dict[str, Any],
    releases_data: list[dict[str, Any]],
    hosts: tuple[str, ...],
    secrets: tuple[SecretRef, ...],
) -> Service:
    env = {**data.get("env", {}), **override.get("env", {})}
    lb = data.get("loadbalancing", {})
    t = lb.get("timeouts", {})
    releases = tuple(
        Release(
            revision=r["revision"],
            weight=r["weight"],
            spec=_spec(data, r, {**env, **r.get("env", {})}, secrets),
            canary=_canary(r["canary"]) if "canary" in r else None,
        )
        for r in releases_data
    )
    return Service(
        name=data["name"],
        releases=releases,
        replicas=override.get("replicas", data.get("replicas", 1)),
        hosts=hosts,
        balance=lb.get("balance", "roundrobin"),
        timeouts=Timeouts(
            connect_ms=duration_ms(t.get("connect", "5s")),
            server_ms=duration_ms(t.get("server", "30s")),
            queue_ms=duration_ms(t.get("queue", "30s")),
        ),
        drain_timeout_s=_seconds(lb.get("drain_timeout", "30s")),
        actions=tuple(
            ActionSpec(a["name"], a["path"], a.get("method")) for a in data.get("actions", [])
        ),
        max_actions=data.get("max_actions", 20),
    )


def _spec(
    data: dict[str, Any], rel: dict[str, Any], env: dict[str, Any], secrets: tuple[SecretRef, ...]
) -> ContainerSpec:
    res = data.get("resources", {})
    cmd, args = data.get("command"), data.get("args")
    return ContainerSpec(
        image=rel.get("image") or f"{data['image']}:{rel['revision']}",
        port=data["port"],
        command=tuple(cmd) if cmd is not None else None,
        args=tuple(args) if args is not None else None,
        env=tuple(sorted((k, _env_text(v)) for k, v in env.items())),
        secrets=secrets,
        health=_health(data.get("health")),
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
        logging=_logging(data, rel),
        labels=tuple(sorted(data.get("labels", {}).items())),
        stop_grace_s=_seconds(data.get("stop_grace_period", "10s")),
    )


def _health(health: dict[str, Any] | None) -> HealthCheck:
    """The service's check: the settings all kinds share, then the kind's own part
    (``reconciler.health``)."""
    if health is None:
        return NO_HEALTH
    common = HealthCheck(
        kind=NO_HEALTH.kind,
        interval_ms=duration_ms(health.get("interval", "2s")),
        timeout_ms=duration_ms(health.get("timeout", "1s")),
        retries=health.get("retries", 3),
        start_period_ms=duration_ms(health.get("start_period", "0s")),
    )
    return read_health(health, common)


def _logging(data: dict[str, Any], rel: dict[str, Any]) -> Logging | None:
    if "logging" not in data:
        return None
    options = dict(data["logging"].get("options", {}))
    if data["logging"]["driver"] == "syslog":
        # Docker fills {{.ID}} in: each line says service, revision and container.
        options.setdefault("tag", f"{data['name']}/{rel['revision']}/{{{{.ID}}}}")
    return Logging(driver=data["logging"]["driver"], options=tuple(sorted(options.items())))


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
        latency=_latency(analysis.get("latency", {})),
        errors_4xx=bool(analysis.get("errors_4xx", False)),
    )


def _latency(data: Any) -> LatencyPolicy | None:
    """``analysis.latency``: off (``off``, which YAML reads as false, or ``enabled:
    false``) or the policy."""
    if not isinstance(data, dict) or not data.get("enabled", True):
        return None
    return LatencyPolicy(
        quantile=float(data.get("quantile", 0.95)),
        max_slowdown=float(data.get("max_slowdown", 1.2)),
        min_ms=float(data.get("min_ms", 2)),
    )


def _seconds(duration: str) -> int:
    """Whole seconds, rounded up (Docker and the drain loop count in seconds)."""
    return -(-duration_ms(duration) // 1000)


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
