"""Documented promises held against the real engine and a real HAProxy, on one shared
deployment (module scope), in order:

- "Bad input changes nothing" (DESIGN invariant 4, operations.md "When something
  fails", first row): a commit that fails the manifest checks stops `apply` with exit 1
  and an error naming file, line, column and field; no history row, container ids,
  config bytes and HAProxy's reload counter unchanged.
- "Secrets never appear" (invariant 5, README): the value of a secret and of a
  secret-looking env key are in no output (apply, plan JSON, history text/JSON/--run,
  status text/JSON) and in no container label, while they do reach the container's env.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import docker
import pytest
from deploy_support import Deployment
from fault_support import History
from repo_support import git

from reconciler import identity

SECRET = "s3cr3t-db-value-4711"
TOKEN = "tok-abcdef-0815"


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    mp = pytest.MonkeyPatch()
    mp.setenv("STAGING_DB_PASSWORD", SECRET)
    d = Deployment(tmp_path_factory.mktemp("promises"), docker_client)
    d.edit("services/web.yaml", "  LOG_LEVEL: info\n", f"  LOG_LEVEL: info\n  API_TOKEN: {TOKEN}\n",
           "web gets a token")
    code, out = d.apply()
    assert code == 0, out
    d.first_output = out  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.cleanup()
        mp.undo()


def _world(dep: Deployment) -> tuple[object, ...]:
    return (
        sorted(c.id for c in dep.containers()),
        dep.haproxy.paths.config.read_bytes(),
        dep.reloads(),
        History(dep.state).last_run(),
    )


@pytest.mark.parametrize("rel, old, new, where", [
    ("environments/staging.yaml", "replicas: 1", "replicas: one",
     "environments/staging.yaml:15:15: services.web.replicas: 'one' is not of type 'integer'"),
    ("services/web.yaml", "revision: v1", 'revision: "v1;reboot"',
     "services/web.yaml:8:15: releases[0].revision: 'v1;reboot' is not a valid revision"),
])
def test_bad_input_under_apply_changes_nothing(dep: Deployment, rel: str, old: str, new: str,
                                               where: str) -> None:
    before = _world(dep)
    dep.edit(rel, old, new, "broken")
    try:
        code, out = dep.apply()
        assert code == 1, out
        assert where in out, out
        assert _world(dep) == before, "a bad commit changed the world"
        code, out = dep.cli("plan")
        assert code == 1 and where in out, out
        assert _world(dep) == before
    finally:
        git(dep.repo, "revert", "--no-edit", "HEAD")
    code, out = dep.apply()
    assert code == 0 and "No changes" in out, out


def test_secrets_never_appear(dep: Deployment) -> None:
    api, web = dep.containers("api")[0], dep.containers("web")[0]
    # they reach the containers
    assert f"DB_PASSWORD={SECRET}" in api.attrs["Config"]["Env"]
    assert f"API_TOKEN={TOKEN}" in web.attrs["Config"]["Env"]
    outputs = {"first apply": dep.first_output}  # type: ignore[attr-defined]
    # a change that touches the secret-looking env value: plan and apply name the key
    dep.edit("services/web.yaml", f"API_TOKEN: {TOKEN}", f"API_TOKEN: {TOKEN}-2", "rotate")
    for what, args in {
        "plan text": ("plan",),
        "plan json": ("plan", "-o", "json"),
        "apply": ("apply", "--health-timeout", "20"),
        "status text": ("status",),
        "status json": ("status", "-o", "json"),
    }.items():
        code, out = dep.cli(*args)
        assert code in (0, 2), (what, out)
        outputs[what] = out
    assert "API_TOKEN" in outputs["plan text"], outputs["plan text"]
    for what, args in {
        "history": ("history",),
        "history json": ("history", "-o", "json"),
    }.items():
        code, out = dep.cli(*args, repo=False)
        assert code == 0, (what, out)
        outputs[what] = out
    for run in json.loads(outputs["history json"]):
        for fmt in ("text", "json"):
            code, out = dep.cli("history", "--run", str(run["id"]), "-o", fmt, repo=False)
            assert code == 0, out
            outputs[f"history --run {run['id']} {fmt}"] = out
    labels = {f"label {k} of {c.name}": v for c in dep.containers() for k, v in c.labels.items()}
    assert any(identity.SPEC in k for k in labels)
    for what, text in {**outputs, **labels}.items():
        for value in (SECRET, TOKEN):
            assert value not in text, f"{value!r} appears in {what}:\n{text}"
