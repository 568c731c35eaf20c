"""Identity of what the reconciler runs: labels, deterministic names, config hashes.

A container's name is a function of (environment, service, revision, config hash,
replica), so a pass that crashed after creating a container finds it again instead of
creating a duplicate. The config hash covers everything that defines the container,
with the image resolved to its id, so a moved tag or a changed env value is a difference.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from reconciler.model import ContainerSpec, Instance

PREFIX = "io.reconciler."
MANAGED = PREFIX + "managed"
ENVIRONMENT = PREFIX + "environment"
SERVICE = PREFIX + "service"
REVISION = PREFIX + "revision"
CONFIG_HASH = PREFIX + "config-hash"
REPLICA = PREFIX + "replica"
COMMIT = PREFIX + "commit"
SPEC = PREFIX + "spec"  # canonical JSON of the spec, to explain later what changed
INSTANCE = PREFIX + "instance"  # the reconciler instance that owns the container

_SECRETISH = re.compile(r"(PASSW|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY|ACCESS_?KEY)", re.I)
MASK = "******"


def plain(value: Any) -> Any:
    """Frozen model data as JSON-ready dicts and lists (like ``asdict``, several times faster:
    the planner hashes every release of every service on every pass)."""
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return {name: plain(getattr(value, name)) for name in fields}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


def spec_dict(spec: ContainerSpec, image_id: str) -> dict[str, Any]:
    """The spec as plain data with the resolved image id: what the hash covers."""
    data: dict[str, Any] = plain(spec)
    data["image_id"] = image_id
    return data


def keyed_digest(key: str, name: str, value: str) -> str:
    """What a label shows for the value of secret-looking env key ``name``: an HMAC
    under the instance's host-local ``key`` (the ``label-key`` file of its state dir),
    so a change is still seen but a short value (``API_TOKEN=4711``) cannot be found
    by hashing guesses, as it could from a plain digest."""
    mac = hmac.new(key.encode(), f"{name}={value}".encode(), hashlib.sha256)
    return "hmac-sha256:" + mac.hexdigest()[:16]


def label_spec(spec: ContainerSpec, image_id: str, key: str = "") -> dict[str, Any]:
    """``spec_dict`` as stored in the spec label: values of secret-looking env keys are
    replaced by ``keyed_digest``, so ``docker inspect`` shows no such value yet a change
    is still seen. ``key``: the instance's label key (``Instance.label_key``)."""
    data = spec_dict(spec, image_id)
    data["env"] = [
        [k, keyed_digest(key, k, v) if is_secretish(k) else v] for k, v in data["env"]
    ]
    return data


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(
    environment: str,
    service: str,
    revision: str,
    spec: ContainerSpec,
    image_id: str,
    key: str = "",
) -> str:
    """sha256 over everything that defines the container (hex, 64 characters).

    Taken over ``label_spec`` (secret-looking env values as keyed digests), not over the
    raw values: the hash is a label and part of the name, and everything else it covers
    is in the spec label, so a plain hash would let anyone who can list containers test
    guesses of those values. Without such values it is the hash of the plain spec."""
    payload = canonical_json([environment, service, revision, label_spec(spec, image_id, key)])
    return hashlib.sha256(payload.encode()).hexdigest()


def container_name(
    environment: str, service: str, revision: str, chash: str, replica: int, instance: str = ""
) -> str:
    """Deterministic Docker name, prefixed with the owning instance's name (when it has
    one); with the app host, also the HAProxy server name of the container."""
    prefix = f"{instance}-" if instance else ""
    return f"{prefix}{environment}-{service}-{revision}-{chash[:10]}-{replica}"


def owned(instance: Instance, labels: Mapping[str, str]) -> bool:
    """Whether a managed container with ``labels`` belongs to ``instance``."""
    label = labels.get(INSTANCE, "")
    return label == instance.name if label else instance.adopt_unlabelled


# Names in HAProxy's config. Every name the reconciler gives a backend, frontend or
# server, and every reading of one back, goes through the functions below.
_BACKEND_PREFIX = "be_"
_FRONTEND_PREFIX = "fe_"
_SERVER_SEPARATOR = "."  # between the app host and the container: host names have none
# The header line of a rendered config that names one section and its digest:
# ``# reconciler-section <section name...> <digest>``.
SECTION_MARKER = "# reconciler-section"


def server_name(host: str, container: str) -> str:
    """HAProxy server name of a container: unique in its backend across hosts, stable."""
    return f"{host}{_SERVER_SEPARATOR}{container}"


def parse_server_name(server: str) -> tuple[str, str]:
    """``(app host, container)`` of a server name; the inverse of ``server_name``.

    Exact for every name ``server_name`` makes, since host names contain no dot (the
    schema's ``name`` pattern). Total: any other text splits at its first dot, and a
    name without one is all host (``("x", "")``), so a name found in HAProxy that the
    reconciler did not make never raises."""
    host, _, container = server.partition(_SERVER_SEPARATOR)
    return host, container


def server_host(server: str) -> str:
    """The app host of a server name (``parse_server_name(server)[0]``)."""
    return parse_server_name(server)[0]


def backend_name(service: str) -> str:
    return f"{_BACKEND_PREFIX}{service}"


def parse_backend_name(backend: str) -> str:
    """The service of a backend name; the inverse of ``backend_name``.

    Total: a name without the ``be_`` prefix (not made by ``backend_name``) is returned
    as it is, so a message about a backend the reconciler did not name still names it."""
    return backend.removeprefix(_BACKEND_PREFIX)


def frontend_name(frontend: str) -> str:
    return f"{_FRONTEND_PREFIX}{frontend}"


def section_marker(section: str, digest: str) -> str:
    """The header line naming a rendered config section and its digest."""
    return f"{SECTION_MARKER} {section} {digest}"


def parse_section_marker(line: str) -> tuple[str, str] | None:
    """``(section name, digest)`` of a ``section_marker`` line; its inverse.

    Tokens are split on white space: the name is every token between the marker and the
    last one, joined by one space. None when ``line`` is no marker line (``#`` and the
    marker word must be separate from what follows, as written); ``ValueError`` when it
    is one without a name or digest."""
    tokens = line.split()
    if tokens[:2] != SECTION_MARKER.split():
        return None
    if len(tokens) < 4:
        raise ValueError("expected name and digest")
    return " ".join(tokens[2:-1]), tokens[-1]


def container_labels(
    environment: str,
    service: str,
    revision: str,
    chash: str,
    replica: int,
    commit: str,
    spec: ContainerSpec,
    image_id: str,
    instance: str = "",
    key: str = "",
) -> dict[str, str]:
    """The labels of a new container (``key``: the instance's label key)."""
    labels = dict(spec.labels)
    if instance:
        labels[INSTANCE] = instance
    labels.update(
        {
            MANAGED: "true",
            ENVIRONMENT: environment,
            SERVICE: service,
            REVISION: revision,
            CONFIG_HASH: chash,
            REPLICA: str(replica),
            COMMIT: commit,
            SPEC: canonical_json(label_spec(spec, image_id, key)),
        }
    )
    return labels


def is_secretish(key: str) -> bool:
    """Env keys whose values are masked in every output, in case a secret slipped into env."""
    return bool(_SECRETISH.search(key))


def shown_env_value(key: str, value: str) -> str:
    return MASK if is_secretish(key) else value
