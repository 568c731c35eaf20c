"""Docker side of the executor: create, health-gate, stop and remove containers.

Containers are created once and never changed: every setting comes from the spec at
creation (labels, env, secrets, limits, logging, health check). Removing a container
never removes its volumes or bind mounts.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler import polling
from reconciler.desired.policy import SecretRules
from reconciler.errors import ReconcilerError
from reconciler.health import Gate, kind_of
from reconciler.model import ContainerSpec, HealthCheck, SecretRef
from reconciler.redact import Redactor, env_of
from reconciler.transport.base import Transport, TransportError
from reconciler.transport.local import LocalTransport

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

_T = TypeVar("_T")
NS = 1_000_000  # nanoseconds per millisecond (Docker health check durations)


class ContainerError(ReconcilerError):
    """A container could not be created, or did not become healthy."""


@dataclass(frozen=True)
class Started:
    name: str
    id: str
    address: str
    port: int


def read_secret(
    ref: SecretRef, host: str, rules: SecretRules, transport: Transport | None = None
) -> str:
    """The value of a secret: a ``file`` is read on the target host (over SFTP for an SSH
    host), an ``env`` variable from the reconciler's own environment.

    Both within the operator's ``rules`` (validation checked them already; this is the
    check that holds at the moment of reading): a file lies inside ``rules.directory``
    and is reached without following any symbolic link below it; a variable starts with
    ``rules.env_prefix``. Raises ContainerError naming the secret and its source, never
    the value or anything read from the file."""
    if ref.source == "env":
        if why := rules.env_problem(ref.location):
            raise ContainerError(f"secret {ref.name}: variable {ref.location} {why}")
        value = os.environ.get(ref.location)
        if value is None:
            raise ContainerError(
                f"secret {ref.name}: variable {ref.location} is not set in "
                f"the reconciler's environment (for host {host})"
            )
        return value
    inside = rules.relative(ref.location)
    if inside is None:
        raise ContainerError(
            f"secret {ref.name}: {ref.location} is outside the secrets directory "
            f"{rules.directory} of the operator's policy; not read"
        )
    try:
        text = (transport or LocalTransport(host)).read_confined(rules.directory, inside)
    except TransportError as exc:
        raise ContainerError(
            f"secret {ref.name}: cannot read {ref.location} on host {host}: {exc}"
        ) from None
    if text is None:
        raise ContainerError(
            f"secret {ref.name}: cannot read {ref.location} on host {host}: no such file"
        )
    return text.rstrip("\n")


def free_port(address: str) -> int:
    """A port free on ``address`` (of this machine) now. Published explicitly, so a
    restart keeps it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


# Ports picked for remote hosts: below Linux's ephemeral range (32768-60999), so an
# outgoing connection of the host never holds one.
REMOTE_PORTS = range(20000, 32768)


def remote_port_picker(used: Collection[int]) -> Callable[[str], int]:
    """Pick ports for a host we cannot bind on: random in REMOTE_PORTS, never one that a
    known container publishes. A clash with something else is caught at start and
    retried with another port (``create_and_start``)."""
    taken = set(used)

    def pick(_address: str) -> int:
        while True:
            port = random.choice(REMOTE_PORTS)  # noqa: S311 - not a secret
            if port not in taken:
                taken.add(port)
                return port

    return pick


_PORT_CLASH = ("port is already allocated", "address already in use")


def _restart_policy(text: str) -> dict[str, Any]:
    name, _, count = text.partition(":")
    policy: dict[str, Any] = {"Name": "" if name == "no" else name}
    if count:
        policy["MaximumRetryCount"] = int(count)
    return policy


def _healthcheck(h: HealthCheck) -> dict[str, Any] | None:
    """Docker's healthcheck of the container, as its kind declares (``reconciler.health``);
    None for a kind probed from outside (http, like the load balancer does)."""
    test = kind_of(h).docker_test(h)
    if test is None:
        return None
    return {
        "test": test,
        "interval": h.interval_ms * NS,
        "timeout": h.timeout_ms * NS,
        "retries": h.retries,
        "start_period": h.start_period_ms * NS,
    }


def _host_config(api: Any, spec: ContainerSpec, address: str, port: int) -> dict[str, Any]:
    """Docker's host config of a container of ``spec`` publishing on ``address:port``."""
    from docker.types import LogConfig, Mount

    config: dict[str, Any] = api.create_host_config(
        port_bindings={spec.port: (address, port)},
        restart_policy=_restart_policy(spec.restart),
        mounts=[
            Mount(target=v.target, source=v.source, type=v.type, read_only=v.read_only)
            for v in spec.volumes
        ],
        mem_limit=spec.memory_bytes,
        nano_cpus=spec.nano_cpus,
        log_config=LogConfig(type=spec.logging.driver, config=dict(spec.logging.options))
        if spec.logging
        else None,
    )
    return config


def _create_error(exc: docker.errors.APIError, name: str, host: str) -> ContainerError:
    """What a refused create means to the operator."""
    if exc.status_code == 409:  # the name is taken: never by one of ours (see plan)
        return ContainerError(
            f"container name {name} is taken on host {host} by a container this "
            "reconciler instance does not own (another reconciler instance, or one "
            "made by hand); it was left alone. Remove or rename it, or run this "
            "reconciler with another --instance"
        )
    return ContainerError(f"container {name}: {exc.explanation or exc}")


def create_and_start(
    client: docker.DockerClient,
    *,
    name: str,
    labels: dict[str, str],
    spec: ContainerSpec,
    image_id: str,
    address: str,
    host: str,
    secret_rules: SecretRules,
    redactor: Redactor,
    transport: Transport | None = None,
    pick_port: Callable[[str], int] = free_port,
) -> Started:
    """Create and start one container; its port is published on ``address`` (a port
    from ``pick_port``; one that turns out taken is retried with another, 5 times).
    Secrets are read within ``secret_rules``; every value read (and every secret-looking
    env value) is given to ``redactor`` before anything can print it."""
    import docker.errors

    env = dict(spec.env)
    env.update(
        {ref.name: read_secret(ref, host, secret_rules, transport) for ref in spec.secrets}
    )
    redactor.add_env(env, [ref.name for ref in spec.secrets])
    api = client.api
    for attempt in range(5):
        port = pick_port(address)
        try:
            created = api.create_container(
                image_id,
                name=name,
                labels=labels,
                environment=env,
                ports=[spec.port],
                host_config=_host_config(api, spec, address, port),
                entrypoint=list(spec.command) if spec.command is not None else None,
                command=list(spec.args) if spec.args is not None else None,
                healthcheck=_healthcheck(spec.health),
                stop_timeout=spec.stop_grace_s,
            )
        except docker.errors.APIError as exc:
            raise _create_error(exc, name, host) from None
        except (docker.errors.DockerException, OSError) as exc:  # e.g. the engine is gone
            raise ContainerError(
                f"container {name}: cannot create it on host {host}: {_docker_why(exc)}"
            ) from None
        try:
            api.start(created["Id"])
        except (docker.errors.DockerException, OSError) as exc:
            # The container this call created is removed (by id: a name could be another's).
            with contextlib.suppress(docker.errors.DockerException, OSError):
                api.remove_container(created["Id"], force=True)
            why = _docker_why(exc)
            if attempt < 4 and any(text in why.lower() for text in _PORT_CLASH):
                continue
            raise ContainerError(f"container {name}: {why}") from None
        return Started(name=name, id=str(created["Id"]), address=address, port=port)
    raise AssertionError("unreachable: the last attempt returns or raises")


def wait_healthy(
    client: docker.DockerClient,
    name: str,
    health: HealthCheck,
    address: str,
    port: int,
    deadline_s: float,
    transport: Transport | None = None,
    redactor: Redactor | None = None,
    secret_names: Collection[str] = (),
) -> None:
    """Return when the container is healthy; raise ContainerError with the last health
    output and the log tail when it exits, turns unhealthy or the deadline passes, or
    the engine fails (``_state``). Probes are made from the container's host (``transport``).

    Before raising, the values of ``secret_names`` and of secret-looking keys in the
    container's own environment go to ``redactor`` and are blanked out of the message:
    the container may have been started by an earlier pass that read them."""
    transport = transport or LocalTransport()
    deadline = time.monotonic() + deadline_s
    last = "no health result yet"
    gate = kind_of(health).gate(health)
    container = _state(name, lambda: client.containers.get(name))  # its state, read now
    sleeps = polling.intervals()  # a container that is up at once passes at once
    while True:
        state = container.attrs["State"]
        if state.get("Status") != "running":
            last = f"container {state.get('Status')} (exit code {state.get('ExitCode')})"
            break
        if gate.probe == "docker":
            h = state.get("Health") or {}
            log = h.get("Log") or []
            if log:
                last = f"exit {log[-1].get('ExitCode')}: {str(log[-1].get('Output', '')).strip()}"
            if h.get("Status") == "healthy":
                return
            if h.get("Status") == "unhealthy":
                break
        else:
            ok, last = _probe(gate, health.timeout_ms, address, port, transport)
            if ok:
                return
        if time.monotonic() > deadline:
            last += f" (no success within {deadline_s:.0f}s)"
            break
        time.sleep(next(sleeps))
        _state(name, container.reload)
    hide = redactor or Redactor()
    hide.add_env(env_of(container.attrs.get("Config", {}).get("Env")), secret_names)
    raise ContainerError(
        hide.scrub(
            f"container {name} is not healthy: {last}\nlast log lines:\n{_log_tail(container)}"
        )
    )


def _state(name: str, read: Callable[[], _T]) -> _T:
    """``read()`` of a container's state; the Docker engine's errors (the container
    gone, the engine unreachable) raised as ContainerError naming the container (the
    executor adds the host)."""
    import docker.errors

    try:
        return read()
    except (docker.errors.DockerException, OSError) as exc:
        raise ContainerError(
            f"container {name}: cannot read its state from the Docker engine: "
            f"{_docker_why(exc)}"
        ) from None


def _probe(
    gate: Gate, timeout_ms: int, address: str, port: int, transport: Transport
) -> tuple[bool, str]:
    """One probe: TCP connect (``tcp``) or ``GET path`` over HTTP/1.0 (``http``, 2xx/3xx
    is good)."""
    timeout = max(timeout_ms / 1000, 0.2)
    try:
        sock = transport.open_tcp(address, port, timeout)
    except TransportError as exc:
        return False, f"port {port}: {exc}"
    try:
        if gate.probe == "tcp":
            return True, "port accepts connections"
        request = f"GET {gate.path} HTTP/1.0\r\nHost: {address}:{port}\r\n\r\n"
        sock.sendall(request.encode())
        data = b""
        while b"\r\n" not in data and len(data) < 8192:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as exc:  # TimeoutError included
        return False, f"GET {gate.path}: {exc.strerror or exc or 'timed out'}"
    finally:
        sock.close()
    parts = data.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, f"GET {gate.path}: no HTTP answer"
    status = int(parts[1])
    return 200 <= status < 400, f"GET {gate.path}: HTTP {status}"


def _log_tail(container: Container, lines: int = 20) -> str:
    try:
        raw: bytes = container.logs(tail=lines)
    except Exception as exc:  # best effort: some log drivers cannot be read back
        return f"  (logs unavailable: {exc})"
    text = raw.decode("utf-8", errors="replace").rstrip()
    return "\n".join(f"  | {line}" for line in text.splitlines()) or "  (no output)"


def health_deadline(health: HealthCheck, minimum: float) -> float:
    """How long a new container may take to become healthy."""
    per_try = (health.interval_ms + health.timeout_ms) / 1000
    return max(minimum, health.start_period_ms / 1000 + per_try * (health.retries + 1))


def stop_and_remove(client: docker.DockerClient, name: str, grace_s: int) -> bool:
    """Stop with the grace period and remove; volumes are kept. False if already gone.
    Any other failure of the engine (refused, unreachable) raises ContainerError.

    Two calls, no inspect first: stopping a container that is not running is a no-op
    for the engine (and a crash-looping, "restarting" one must be stopped too, or
    Docker refuses to remove it)."""
    import docker.errors

    try:
        client.api.stop(name, timeout=grace_s)
        client.api.remove_container(name, v=False)
    except docker.errors.NotFound:
        return False
    except (docker.errors.DockerException, OSError) as exc:
        raise ContainerError(f"container {name}: {_docker_why(exc)}") from None
    return True


def _docker_why(exc: Exception) -> str:
    """What the Docker SDK says went wrong: an API error's explanation, else its text."""
    return str(getattr(exc, "explanation", None) or exc)
