"""Docker observation parsers against recorded GET /containers/json and /images/json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import identity
from reconciler.observe.docker import parse_container, parse_health, parse_images

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "docker"


def containers() -> dict[str, object]:
    raw = json.loads((FIXTURES / "containers.json").read_text())
    return {c.name: c for c in map(parse_container, raw)}


@pytest.mark.parametrize(("name", "status", "health", "port"), [
    ("fixture-web-v1-healthy", "running", "healthy", 32778),
    ("fixture-web-v1-unhealthy", "running", "unhealthy", 32779),
    ("fixture-web-v1-exited", "exited", "none", None),
    ("fixture-web-v2-starting", "running", "starting", 32780),
])
def test_recorded_containers(name: str, status: str, health: str, port: int | None) -> None:
    c = containers()[name]
    assert (c.status, c.health) == (status, health)  # type: ignore[attr-defined]
    assert c.published == (("127.0.0.1", port) if port else None)  # type: ignore[attr-defined]
    assert c.label(identity.SERVICE) == "web"  # type: ignore[attr-defined]
    assert c.image_id.startswith("sha256:")  # type: ignore[attr-defined]


def test_recorded_images_resolve_refs() -> None:
    raw = json.loads((FIXTURES / "images.json").read_text())
    got = dict(parse_images(raw, ["sample-app:v1", "sample-app:v2", "sample-app:missing"]))
    assert set(got) == {"sample-app:v1", "sample-app:v2"}
    assert got["sample-app:v1"].startswith("sha256:13c6e1802054")
    assert dict(parse_images([{"Id": "sha256:1", "RepoTags": ["nginx:1"]}],
                             ["docker.io/library/nginx:1"])) == {"docker.io/library/nginx:1": "sha256:1"}


@pytest.mark.parametrize(("text", "health"), [
    ("Up 3 minutes (healthy)", "healthy"),
    ("Up 2 seconds (health: starting)", "starting"),
    ("Up 1 second (unhealthy)", "unhealthy"),
    ("Up 5 hours", "none"),
    ("", "none"),
])
def test_health_from_status_text(text: str, health: str) -> None:
    assert parse_health(text) == health


def test_only_the_service_port_is_taken() -> None:
    raw = {"Id": "x", "Names": ["/a"], "State": "running", "Status": "Up",
           "Labels": {identity.SPEC: json.dumps({"port": 9000})},
           "Ports": [{"IP": "127.0.0.1", "PrivatePort": 8080, "PublicPort": 1, "Type": "tcp"},
                     {"IP": "127.0.0.1", "PrivatePort": 9000, "PublicPort": 2, "Type": "tcp"}]}
    assert parse_container(raw).published == ("127.0.0.1", 2)
    assert parse_container({**raw, "State": "weird"}).status == "dead"
