"""Observation and planning against the real Docker engine (no HAProxy running)."""

from __future__ import annotations

import json
from pathlib import Path

import docker
from click.testing import CliRunner
from conftest import TEST_LABEL
from repo_support import commit, edit, scratch_repo

from reconciler import identity, instance
from reconciler.cli import main
from reconciler.desired.manifests import load_manifests, resolve
from reconciler.desired.source import RepoSpec, open_repo, read_commit
from reconciler.observe.docker import observe_host
from reconciler.transport.dockerapi import local_client


def start_as_reconciler_would(client: docker.DockerClient, env: str, state, run_id: str,
                              owner: str) -> dict[str, str]:
    """Start every container of ``state`` with the labels the reconciler instance
    ``owner`` gives its containers; name -> id."""
    started = {}
    for svc in state.services:
        for rel in svc.releases:
            image_id = client.images.get(rel.spec.image).id
            chash = identity.config_hash(env, svc.name, rel.revision, rel.spec, image_id)
            for replica in range(svc.replicas):
                name = identity.container_name(env, svc.name, rel.revision, chash, replica,
                                               owner)
                labels = identity.container_labels(env, svc.name, rel.revision, chash, replica,
                                                   state.commit, rel.spec, image_id, owner)
                labels[TEST_LABEL] = run_id
                c = client.containers.run(rel.spec.image, detach=True, name=name, labels=labels,
                                          ports={"8080/tcp": ("127.0.0.1", None)},
                                          environment=dict(rel.spec.env))
                started[name] = c.id
    return started


def test_older_release_is_replaced_and_unmanaged_containers_are_never_planned(
        tmp_path: Path, docker_client: docker.DockerClient, run_id: str) -> None:
    env = f"it{run_id}"
    repo = scratch_repo(tmp_path, rename_env={"staging": env})
    git_repo, root = open_repo(RepoSpec(str(repo)))
    old_state = resolve(load_manifests(read_commit(git_repo, root, "HEAD").files), env, "old")
    owner = instance.resolve(tmp_path / "state", None, create=False).name
    running = start_as_reconciler_would(docker_client, env, old_state, run_id, owner)
    # Unmanaged containers, one even named like a managed one: never in any plan.
    strangers = [
        docker_client.containers.run("sample-app:v1", detach=True, name=f"{env}-web-v1-stranger",
                                     labels={TEST_LABEL: run_id}),
        docker_client.containers.run("sample-app:v1", detach=True, name=f"unmanaged-{run_id}",
                                     labels={TEST_LABEL: run_id, "team": "web"}),
    ]
    edit(repo, "services/web.yaml", "revision: v1", "revision: v2")
    head = commit(repo, "web v2")

    result = CliRunner().invoke(main, ["plan", "--repo", str(repo), "--env", env, "--state-dir",
                                       str(tmp_path / "state"), "--output", "json"])
    assert result.exit_code == 2, result.output + result.stderr
    doc = json.loads(result.stdout)
    assert doc["commit"] == head and doc["changes_pending"]
    actions = doc["actions"]
    web_old = {n: i for n, i in running.items() if f"{env}-web-" in n}
    api = {n for n in running if f"{env}-api-" in n}
    removed = {a["name"]: a["container_id"] for a in actions if a["kind"] == "remove-container"}
    assert removed == web_old
    assert {a["reason"] for a in actions if a["kind"] == "remove-container"} == {
        "release v1 removed"}
    started = [a for a in actions if a["kind"] == "start-container"]
    assert [(a["service"], a["revision"]) for a in started] == [("web", "v2")]
    assert started[0]["reason"] == "new release v2 at weight 100"
    # the api containers match the desired config hash exactly: kept, only added to HAProxy
    assert not any(a.get("name") in api for a in actions)
    assert {a["container"] for a in actions if a["kind"] == "add-server"
            and a["service"] == "api"} == api
    text = result.stdout
    for s in strangers:
        assert s.id not in text and s.name not in text


def test_observer_reads_managed_containers_in_one_call(
        docker_client: docker.DockerClient, run_id: str) -> None:
    labels = {identity.MANAGED: "true", identity.ENVIRONMENT: f"it{run_id}",
              identity.SERVICE: "web", identity.SPEC: json.dumps({"port": 8080}),
              TEST_LABEL: run_id}
    c = docker_client.containers.run("sample-app:v1", detach=True, labels=labels,
                                     ports={"8080/tcp": ("127.0.0.1", None)})
    stopped = docker_client.containers.run("sample-app:v1", detach=True, labels=labels)
    stopped.stop(timeout=1)
    unmanaged = docker_client.containers.run("sample-app:v1", detach=True,
                                             labels={TEST_LABEL: run_id})
    client = local_client()
    host = observe_host("local", client, ["sample-app:v1", "sample-app:nope"])
    mine = {o.id: o for o in host.containers if o.label(identity.ENVIRONMENT) == f"it{run_id}"}
    assert set(mine) == {c.id, stopped.id}
    assert unmanaged.id not in {o.id for o in host.containers}
    assert mine[c.id].status == "running" and mine[stopped.id].status == "exited"
    c.reload()
    port = int(c.ports["8080/tcp"][0]["HostPort"])
    assert mine[c.id].published == ("127.0.0.1", port)
    assert dict(host.images) == {"sample-app:v1": docker_client.images.get("sample-app:v1").id}
