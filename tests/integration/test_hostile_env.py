"""Hostile env values against the real Docker engine.

Accepted values (quotes, ``$()``, backticks, ``../``, non-ASCII, very long, empty...) must
arrive in the container exactly as written: ``docker inspect`` Config.Env holds
``KEY=value`` byte for byte (the reconciler passes env as a list, never through a shell).
A rejected value (a line break) must change nothing: exit 1, no container, no HAProxy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest
from deploy_support import Deployment
from hostile_support import yaml_quoted

HOSTILE_ENV = {
    "H_QUOTES": "it's \"quoted\"",
    "H_SUBST": "$(touch /tmp/pwned) ${HOME} $HOME",
    "H_BACKTICKS": "`id`",
    "H_DOTDOT": "../../etc/passwd",
    "H_SHELL": "a; rm -rf / && echo | cat > x",
    "H_EQUALS": "a=b=c",
    "H_HASH": "# not a comment",
    "H_TEMPLATE": "{{.ID}} %s %n",
    "H_NON_ASCII": "héllo ☃ 日本 \U0001f600",
    "H_BACKSLASH": "C:\\path\\n",
    "H_SPACES": "  padded  ",
    "H_EMPTY": "",
    "H_LONG": "L" * 4000,
}


@pytest.fixture
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("hostile"), docker_client)
    yield d
    d.cleanup()


def _env_lines(values: dict[str, str]) -> str:
    return "".join(f"  {key}: {yaml_quoted(value)}\n" for key, value in values.items())


def test_rejected_env_value_changes_nothing(dep: Deployment) -> None:
    dep.edit("services/web.yaml", "  LOG_LEVEL: info\n",
             "  LOG_LEVEL: info\n" + _env_lines({"H_BAD": "ok\nEVIL=1"}))
    code, out = dep.apply()
    assert code == 1, out
    assert "env.H_BAD: value of H_BAD contains a line break" in out
    assert "nothing was changed" in out
    assert dep.containers() == []
    assert not dep.haproxy.paths.config.exists()


def test_accepted_env_values_arrive_verbatim(dep: Deployment) -> None:
    dep.edit("services/web.yaml", "  LOG_LEVEL: info\n",
             "  LOG_LEVEL: info\n" + _env_lines(HOSTILE_ENV))
    code, out = dep.apply()
    assert code == 0, out
    web = dep.containers("web")
    assert web
    for container in web:
        env = container.attrs["Config"]["Env"]
        for key, value in HOSTILE_ENV.items():
            assert f"{key}={value}" in env, (key, [e for e in env if e.startswith(key)])
    code, body = dep.get("/")
    assert code == 200, body  # and the service still serves
