"""Live state of one Docker engine: managed containers and the images of desired refs.

``observe_host`` makes one API call for the containers (filtered by the managed label,
never one call per container) and one for the images. The parsers are pure functions of
the API's JSON, tested against recorded output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from reconciler import identity
from reconciler.errors import ObserveError
from reconciler.model import (
    ContainerStatus,
    HealthStatus,
    Instance,
    ObservedContainer,
    ObservedHost,
    Pairs,
)

if TYPE_CHECKING:
    import docker

_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")
_STATUSES = {"created", "running", "paused", "restarting", "removing", "exited", "dead"}


def parse_health(status_text: str) -> HealthStatus:
    """Health from the list API's Status text, e.g. "Up 3 minutes (healthy)"."""
    m = _HEALTH.search(status_text or "")
    if not m:
        return "none"
    return "starting" if m.group(1) == "health: starting" else cast(HealthStatus, m.group(1))


def _service_port(labels: dict[str, str]) -> int | None:
    try:
        port = json.loads(labels.get(identity.SPEC, "{}")).get("port")
    except (ValueError, AttributeError):
        return None
    return port if isinstance(port, int) else None


def parse_container(raw: dict[str, Any]) -> ObservedContainer:
    """One entry of GET /containers/json."""
    labels = raw.get("Labels") or {}
    state = raw.get("State", "dead")
    port = _service_port(labels)
    published = None
    for p in raw.get("Ports") or []:
        if (
            p.get("PublicPort")
            and p.get("Type", "tcp") == "tcp"
            and (port is None or p.get("PrivatePort") == port)
        ):
            published = (p.get("IP") or "0.0.0.0", int(p["PublicPort"]))  # noqa: S104
            break
    names = raw.get("Names") or ["/" + raw.get("Id", "")[:12]]
    return ObservedContainer(
        id=raw["Id"],
        name=names[0].lstrip("/"),
        labels=tuple(sorted(labels.items())),
        status=cast(ContainerStatus, state if state in _STATUSES else "dead"),
        health=parse_health(raw.get("Status", "")),
        image_id=raw.get("ImageID", ""),
        published=published,
    )


def _normalise(ref: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def parse_images(raw: Iterable[dict[str, Any]], wanted: Iterable[str]) -> Pairs:
    """(ref, image id) for each wanted ref present in GET /images/json output."""
    index: dict[str, str] = {}
    for image in raw:
        for ref in (image.get("RepoTags") or []) + (image.get("RepoDigests") or []):
            index[_normalise(ref)] = image["Id"]
    return tuple(
        sorted((ref, index[_normalise(ref)]) for ref in set(wanted) if _normalise(ref) in index)
    )


def observe_host(
    name: str,
    client: docker.DockerClient,
    wanted_images: Iterable[str],
    instance: Instance | None = None,
) -> ObservedHost:
    """Managed containers of ``instance`` (all environments; every instance's when None)
    and wanted images of one engine. Another instance's containers are left out here, so
    nothing downstream can adopt or prune them."""
    import docker.errors

    try:
        raw = client.api.containers(all=True, filters={"label": f"{identity.MANAGED}=true"})
        images = client.api.images()
    except (docker.errors.DockerException, OSError) as exc:
        raise ObserveError(f"host {name}: cannot read the Docker engine: {exc}") from exc
    if instance is not None:
        raw = [c for c in raw if identity.owned(instance, c.get("Labels") or {})]
    containers = tuple(sorted((parse_container(c) for c in raw), key=lambda c: c.name))
    return ObservedHost(
        name=name, containers=containers, images=parse_images(images, wanted_images)
    )
