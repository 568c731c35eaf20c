"""Managing an existing HAProxy (started by the operator) instead of the embedded one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment, free_port, wait_for

from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client)
    yield d
    d.cleanup()


def test_existing_haproxy_is_configured_and_reloaded(dep: Deployment, tmp_path: Path) -> None:
    etc = tmp_path / "etc-haproxy"
    etc.mkdir()
    paths = HAProxyPaths.external(etc / "haproxy.cfg", etc / "admin.sock", etc / "master.sock")
    flags = ["--haproxy-config", str(paths.config), "--haproxy-socket", str(paths.stats_socket),
             "--haproxy-master-socket", str(paths.master_socket)]
    # Not running yet: the reconciler refuses to start someone else's HAProxy.
    code, out = dep.cli("apply", *flags)
    assert code == 1 and "start it in master-worker mode" in out
    # The operator's HAProxy, with the operator's own minimal config.
    paths.config.write_text(
        "global\n"
        f"    stats socket {paths.stats_socket} mode 600 level admin expose-fd listeners\n"
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
        "    timeout server 5s\n"
        f"frontend placeholder\n    bind 127.0.0.1:{free_port()}\n")
    subprocess.run(["haproxy", "-W", "-D", "-S", f"{paths.master_socket},mode,600", "-f",
                    str(paths.config), "-p", str(etc / "haproxy.pid")], check=True)
    external = HAProxy(paths)
    try:
        wait_for(external.running, what="the operator's HAProxy")
        reloads = external.procs().reloads
        code, out = dep.cli("apply", *flags)
        assert code == 0, out
        assert "reloaded HAProxy (confirmed)" in out
        assert external.procs().reloads == reloads + 1
        assert "revision=v1" in dep.get("/")[1]
        assert paths.last_good.read_text().startswith("global")  # the operator's config kept
        code, out = dep.cli("plan", *flags)
        assert code == 0, out
    finally:
        pid = int((etc / "haproxy.pid").read_text().split()[0])
        os.kill(pid, 15)
