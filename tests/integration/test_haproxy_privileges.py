"""The embedded HAProxy's workers never run as root (issue 17, item 5).

A real deployment through the CLI (the reconciler starts HAProxy itself) on a frontend
port below 1024: the master binds it as root, the workers run as an unprivileged user in
an empty root-owned chroot, with no supplementary group. A release switch then reloads
through the master CLI (new workers, same rules), with the server-state file and the
stats socket's fd passing still working; HAProxy keeps serving throughout.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment

from reconciler.lb.haproxy.privileges import chroot_dir


def free_low_port() -> int:
    """A free TCP port below 1024 on 127.0.0.1 (only root can bind it)."""
    for port in random.sample(range(600, 1000), 400):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024 on 127.0.0.1")


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    assert os.geteuid() == 0, "this test checks what happens when root starts HAProxy"
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client, port=free_low_port())
    yield d
    d.cleanup()


def identity(pid: int) -> dict[str, object]:
    """User (as ps names it), uids, supplementary groups and root folder of ``pid``."""
    user = subprocess.run(["ps", "-o", "user=", "-p", str(pid)], capture_output=True,
                          text=True, check=True).stdout.strip()
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"user": user, "uids": fields["Uid"].split(), "groups": fields["Groups"].split(),
            "root": os.readlink(f"/proc/{pid}/root")}


def check_workers(dep: Deployment) -> list[int]:
    procs = dep.haproxy.procs()
    master = identity(procs.master_pid)
    assert master["user"] == "root", master  # binds the ports, owns the sockets, reloads
    assert procs.current_pids, procs
    workers = [identity(pid) for pid in procs.current_pids]
    for worker in workers:
        assert worker["user"] != "root" and "0" not in worker["uids"], worker
        assert worker["groups"] == [], worker  # e.g. never the docker group
    empty = Path(chroot_dir(dep.haproxy.paths.root))
    assert all(w["root"] == str(empty) for w in workers), workers
    assert empty.is_dir() and not any(empty.iterdir())
    assert empty.stat().st_uid == 0 and empty.stat().st_mode & 0o222 == 0
    return list(procs.current_pids)


def test_haproxy_workers_run_unprivileged_in_a_chroot(dep: Deployment) -> None:
    code, out = dep.apply()
    assert code == 0, out
    assert "started HAProxy" in out, out
    first = check_workers(dep)
    config = dep.haproxy.paths.config.read_text()
    assert "\n    user haproxy\n    group haproxy\n" in config, config
    code, body = dep.get("/")  # port < 1024, bound by the root master
    assert code == 200 and "revision=v1" in body, body
    assert dep.haproxy.paths.stats_socket.stat().st_uid == 0
    assert dep.haproxy.paths.stats_socket.stat().st_mode & 0o077 == 0

    # A release switch: servers added at runtime, then a reload through the master CLI
    # (server-state file saved first; the listeners passed over the stats socket).
    edited = dep.repo / "services" / "web.yaml"
    edited.write_text(edited.read_text().replace("revision: v1", "revision: v2"))
    dep.edit("services/web.yaml", "server: 30s", "server: 20s", "web v2, a backend change")
    code, out = dep.apply()
    assert code == 0, out
    assert dep.haproxy.paths.server_state.exists()
    second = check_workers(dep)
    assert set(second).isdisjoint(first), (first, second)  # new workers: it reloaded
    for _ in range(10):
        code, body = dep.get("/")
        assert code == 200 and "revision=v2" in body, body
    code, again = dep.plan()
    assert code == 0 and again["actions"] == [], again
