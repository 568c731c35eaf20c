"""Getting an image onto a host: pulled from its registry, or copied over SSH.

An image reference that names a registry host (``registry.example:5000/app:v2``,
``localhost/app``) is pulled by the host's own engine. One that does not
(``sample-app:v2``) has no registry to come from: a remote host gets it streamed from
this machine's Docker engine (``docker save`` here, ``docker load`` there, through the
SSH connection, never written to disk); the local host pulls it as Docker would.
Image ids survive save/load, so the planner sees the same id on every host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.errors import ReconcilerError
from reconciler.model import Host
from reconciler.transport.dockerapi import local_client

if TYPE_CHECKING:
    import docker


class ImageError(ReconcilerError):
    """An image could not be pulled or copied to a host."""


def names_registry(ref: str) -> bool:
    """True when ``ref`` starts with a registry host (Docker's own rule: the first path
    component has a '.' or ':' or is 'localhost')."""
    first, sep, _ = ref.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def ensure_image(host: Host, client: docker.DockerClient, image: str) -> str:
    """Make ``image`` present on ``host`` (whose engine ``client`` talks to); what was done."""
    import docker.errors

    if host.ssh is None or names_registry(image):
        try:
            client.images.pull(image)
        except (docker.errors.DockerException, OSError, ReconcilerError) as exc:
            raise ImageError(f"host {host.name}: cannot pull {image}: {exc}") from None
        return f"pulled {image}"
    source = local_client()
    try:
        try:
            source.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            raise ImageError(
                f"host {host.name}: image {image} names no registry and is not on this "
                "machine's Docker engine to copy from; push it to a registry and use "
                "the full name (registry-host/name:tag), or build it here"
            ) from None
        except (docker.errors.DockerException, OSError) as exc:
            raise ImageError(
                f"host {host.name}: cannot copy {image}: this machine's Docker engine: {exc}"
            ) from None
        try:
            for line in client.api.load_image(source.api.get_image(image)):
                if isinstance(line, dict) and line.get("error"):
                    raise ImageError(f"host {host.name}: loading {image}: {line['error']}")
        except (docker.errors.DockerException, OSError) as exc:
            raise ImageError(f"host {host.name}: cannot copy {image}: {exc}") from None
    finally:
        source.close()
    return f"copied {image} from this machine over SSH"
