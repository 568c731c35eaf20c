"""Two reconciler instances on one Docker engine never touch each other's containers.

Both manage an environment of the same name from their own state dir, repository and
frontend port. Each observes, adopts and prunes only containers that carry its own
instance name; a container name taken by anything it does not own is reported and left
alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment

from reconciler import identity, instance


@pytest.fixture
def pair(docker_client: docker.DockerClient) -> Iterator[tuple[Deployment, Deployment]]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    root = Path(tempfile.mkdtemp(prefix="inst"))  # short: HAProxy's socket paths are short
    a = Deployment(root / "a", docker_client)
    b = Deployment(root / "b", docker_client, env=a.env)
    try:
        yield a, b
    finally:
        b.cleanup()
        a.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def ids(dep: Deployment, service: str | None = None) -> dict[str, str]:
    return {c.name: c.id for c in dep.containers(service)}


def test_two_instances_share_an_engine(pair: tuple[Deployment, Deployment],
                                       docker_client: docker.DockerClient) -> None:
    a, b = pair
    code, out = a.apply()
    assert code == 0, out
    mine = ids(a)
    assert mine and all(n.startswith(instance.resolve(a.state, None, False).name + "-")
                        for n in mine), mine

    # b: same environment name, own state dir: its own containers, a's untouched
    code, plan = b.plan()
    assert code == 2 and plan["actions"], plan
    assert not [x for x in plan["actions"] if x["kind"] == "remove-container"], plan
    b.four_runs()
    assert ids(a) == mine
    assert ids(b) and not set(ids(b)) & set(mine)
    assert a.get("/")[0] == 200 and b.get("/")[0] == 200
    code, plan = a.plan()
    assert code == 0 and plan["actions"] == [], plan

    # b prunes only its own: two replicas, then the service gone from b's repository
    b.edit("environments/staging.yaml", "replicas: 1", "replicas: 2", "2 replicas")
    code, out = b.apply()
    assert code == 0, out
    assert len(ids(b, "web")) == 2 and ids(a) == mine
    env_file = b.repo / "environments" / "staging.yaml"
    b.write("environments/staging.yaml",
            env_file.read_text().replace("  web:\n    replicas: 2\n", "  web:\n    replicas: 0\n"),
            "web scaled to 0 in b")
    code, out = b.apply()
    assert code == 0, out
    assert ids(b, "web") == {} and ids(a) == mine, (ids(b), ids(a), out)
    assert a.get("/")[0] == 200

    # every container on the engine with this environment carries one of the two names
    names = {c.labels.get(identity.INSTANCE) for c in docker_client.containers.list(
        all=True, filters={"label": f"{identity.ENVIRONMENT}={a.env}"})}
    assert names == {instance.resolve(d.state, None, False).name for d in (a, b)}


def test_a_taken_name_is_reported_and_left_alone(pair: tuple[Deployment, Deployment],
                                                 docker_client: docker.DockerClient) -> None:
    a, _ = pair
    code, out = a.apply()
    assert code == 0, out
    code, plan = a.plan()
    a.edit("environments/staging.yaml", "replicas: 1", "replicas: 2", "2 replicas")
    code, plan = a.plan()
    (start,) = [x for x in plan["actions"] if x["kind"] == "start-container"]
    squatter = docker_client.containers.create("sample-app:v1", name=start["name"],
                                               labels={"io.reconciler-tests.squatter": "1"})
    try:
        code, out = a.apply()
        assert code == 1, out
        assert (f"container name {start['name']} is taken on host local by a container this "
                "reconciler instance does not own") in out, out
        squatter.reload()  # still there: never removed by a reconciler that does not own it
        assert squatter.status == "created"
        assert a.get("/")[0] == 200
    finally:
        squatter.remove(force=True)


def test_explicit_instance_must_match_the_state_dir(pair: tuple[Deployment, Deployment]) -> None:
    a, _ = pair
    code, out = a.apply()
    assert code == 0, out
    stored = instance.resolve(a.state, None, False).name
    code, out = a.cli("plan", "--instance", "someone-else")
    assert code == 1, out
    assert f"belongs to instance {stored!r}, not 'someone-else'" in out, out
    code, out = a.cli("plan", "--instance", "Bad.Name")
    assert code == 1 and "instance name 'Bad.Name' is not valid" in out, out
    code, out = a.cli("plan", "--instance", stored)
    assert code == 0, out
