"""Integration fixtures: the real Docker engine (never mocked, never skipped)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

TEST_LABEL = "io.reconciler-tests.run"
# The operator policy every CLI call of these tests runs under (also in child
# processes: `reconcile watch`, `python -m reconciler apply`), unless a test gives its own
# with --policy. Not the default /etc/reconciler/policy.yaml of this machine.
POLICY = Path(__file__).resolve().parent.parent / "fixtures" / "policy.yaml"
os.environ["RECONCILE_POLICY"] = str(POLICY)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a running Docker engine (start dockerd; "
                    f".ci/setup does): {exc}")
    images = {t for i in client.images.list("sample-app") for t in i.tags}
    missing = {f"sample-app:{r}" for r in ("v1", "v2")} - images
    if missing:
        pytest.fail(f"sample images missing: {sorted(missing)}; run sample-repo/app/build.sh")
    yield client
    client.close()


@pytest.fixture
def run_id(docker_client: docker.DockerClient) -> Iterator[str]:
    """A unique id; every container labelled with it is removed after the test."""
    rid = uuid.uuid4().hex[:8]
    yield rid
    for c in docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={rid}"}):
        c.remove(force=True)
