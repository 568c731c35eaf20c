"""Paths that exist but were never exercised, against the real Docker engine and HAProxy.

1. A reload that fails although ``haproxy -c`` accepted the config: a frontend bound to
   a port another process holds (``-c`` does not bind; the reload does). The last good
   config is restored and reloaded, HAProxy keeps serving, the pass exits 1, and the
   next (fixed) commit converges.
2. A named volume and a bind mount keep their data across a release switch and a
   replica change: the containers append to a file in the volume when they start and
   serve what they read from both mounts, so the data is checked through HAProxy, in
   the volume and bind directory on the host, and in the new containers' mounts.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_support import Deployment, free_port, wait_for
from fault_support import (
    History,
    Traffic,
    answers,
    assert_config_matches_runtime,
    assert_only_desired_containers,
    assert_routes_only_to_healthy,
)

from reconciler import identity

pytestmark = pytest.mark.integration


@pytest.fixture
def dep(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path, docker_client)
    try:
        yield d
    finally:
        d.cleanup()


def converges(dep: Deployment, client: docker.DockerClient) -> str:
    """Apply exits 0 while traffic flows; then nothing is left to do, exactly the desired
    containers run, and HAProxy points only at them."""
    with Traffic(dep.url()) as traffic:
        code, out = dep.apply()
    assert code == 0, out
    traffic.assert_served()
    code, plan = dep.plan()
    assert code == 0 and plan["actions"] == [], plan
    assert_only_desired_containers(dep, client)
    assert_routes_only_to_healthy(dep, client)
    assert_config_matches_runtime(dep)
    return out


# --------------------------------------------------------------------------- 1. reload


def test_failed_reload_restores_the_last_good_config(dep: Deployment,
                                                     docker_client: docker.DockerClient
                                                     ) -> None:
    code, out = dep.apply()
    assert code == 0, out
    paths = dep.haproxy.paths
    good = paths.config.read_bytes()
    procs = dep.haproxy.procs()
    assert procs.failed_reloads == 0 and len(procs.current_pids) == 1, procs

    # A port another process listens on: `haproxy -c` never binds, so it accepts the
    # config; the bind check before the install sees the listener and installs nothing.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    frontend = (f"frontends:\n  - name: extra\n    bind: \"127.0.0.1:{busy}\"\n"
                f"    default_service: web\n")
    try:
        dep.edit("loadbalancer.yaml", "frontends:\n", frontend, "frontend on a busy port")
        with Traffic(dep.url()) as traffic:
            code, out = dep.apply()
        assert code == 1, out
        assert f"frontend extra: 127.0.0.1:{busy}: the port is in use by pid {os.getpid()}" \
            in out and "nothing installed" in out, out
        assert paths.config.read_bytes() == good
        now = dep.haproxy.procs()
        assert (now.reloads, now.current_pids) == (procs.reloads, procs.current_pids), now
        traffic.assert_served()  # not even a refused connection: no reload was tried
    finally:
        holder.close()

    # A socket bound but not listening holds the port too, yet no listener shows (as a
    # process between bind() and listen() would): the check passes, the reload fails.
    holder = socket.socket()
    holder.bind(("127.0.0.1", busy))
    try:
        with Traffic(dep.url()) as traffic:
            code, out = dep.apply()
        assert code == 1, out
        assert re.search(r"error: haproxy: HAProxy reload failed \(failed reloads 1, "
                         r"workers \[\d+\] -> \[\d+\]\); the last good config was restored",
                         out), out
        assert "haproxy -c rejected" not in out, out  # the check passed: this is the reload
        # The config on disk is the last good one again, byte for byte.
        assert paths.config.read_bytes() == good
        assert f":{busy}" not in paths.config.read_text()
        assert not [p.name for p in paths.root.iterdir() if p.name.endswith(".new")]
        # The master reloaded twice (the failed reload, then the restored config); the
        # restore was a good reload: no failure counted, one new current worker, which
        # answers on the stats socket and serves the old servers.
        after = dep.haproxy.procs()
        assert after.master_pid == procs.master_pid
        assert after.reloads == procs.reloads + 2, (procs, after)
        assert after.failed_reloads == 0, after
        assert len(after.current_pids) == 1 and after.current_pids != procs.current_pids, after
        assert {s.server for s in dep.haproxy.server_stats() if s.status.startswith("UP")} \
            >= {identity.server_name("local", c.name) for c in dep.containers("web")}
        # HAProxy pauses the old worker's listeners while the new process tries to bind,
        # for ~2 s even when it gives up (measured: 0.5 -> 2.6 s of refused connections;
        # the bind check before the install avoids this for every listener it can see).
        # What may fail is connecting, never a request HAProxy accepted, and the service
        # answers again before the pass ends.
        assert len(traffic.results) >= traffic.minimum
        assert {status for status, _ in traffic.results} <= {0, 200}, traffic.failures
        assert all("Connection refused" in why for _, why in traffic.failures), traffic.failures
        assert traffic.results[-1] == (200, "revision=v1"), traffic.results[-5:]
        assert answers(dep, 10) == {"revision=v1": 10}
        with pytest.raises(OSError):  # nothing of HAProxy's listens on the busy port
            socket.create_connection(("127.0.0.1", busy), timeout=1).recv(1)
        history = History(dep.state)
        run = history.run(history.last_run())
        assert run["status"] == "failed" and "haproxy failed" in run["summary"], run
    finally:
        holder.close()

    # The fix: a free port. The next pass installs it and converges.
    port = free_port()
    dep.edit("loadbalancer.yaml", f"127.0.0.1:{busy}", f"127.0.0.1:{port}", "a free port")
    converges(dep, docker_client)
    assert paths.last_good.read_bytes() == good
    assert f"127.0.0.1:{port}" in paths.config.read_text()
    wait_for(lambda: answers_on(port), timeout=10, what=f"web answering on :{port}")
    assert dep.haproxy.procs().failed_reloads == 0


def answers_on(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return bool(resp.status == 200 and resp.read().startswith(b"revision=v1"))
    except OSError:
        return False


# --------------------------------------------------------------------------- 2. data

# The container appends one line to the volume each time it starts, then serves (as its
# greeting) the test's notes from the volume and the bind mount and the number of lines:
# so the data a new container finds is visible through HAProxy.
START = ('echo "$REVISION $HOSTNAME" >> /vol/starts; '
         'GREETING="vol=$(cat /vol/note) bind=$(cat /bind/note) starts=$(wc -l < /vol/starts)" '
         'exec /app')


def test_volume_and_bind_mount_keep_their_data(dep: Deployment, tmp_path: Path,
                                               docker_client: docker.DockerClient) -> None:
    volume = f"it-data-{uuid.uuid4().hex[:8]}"
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "note").write_text("bind-note-1\n")
    vol = docker_client.volumes.create(volume)
    try:
        data = Path(vol.attrs["Mountpoint"])  # the volume's directory on this host
        (data / "note").write_text("vol-note-1\n")
        mounts = (f"command: [\"/bin/sh\", \"-c\", {START!r}]\n"
                  f"volumes:\n  - type: volume\n    source: {volume}\n    target: /vol\n"
                  f"  - type: bind\n    source: {bind}\n    target: /bind\n")
        text = (dep.repo / "services/web.yaml").read_text().replace("stop_grace_period:",
                                                                    mounts + "stop_grace_period:")
        dep.write("services/web.yaml", text, "web mounts")
        code, out = dep.apply()
        assert code == 0, out
        assert served(dep) == {"v1 vol=vol-note-1 bind=bind-note-1 starts=1"}
        first = {c.id for c in dep.containers("web")}

        # The container writes; the test writes too, on the host.
        (data / "note").write_text("vol-note-2\n")
        (bind / "note").write_text("bind-note-2\n")
        (bind / "kept").write_text("left by the test\n")

        # 1. release switch v1 -> v2 (new containers, the old ones removed)
        dep.edit("services/web.yaml", "  - revision: v1\n", "  - revision: v2\n", "web v2")
        converges(dep, docker_client)
        assert not first & {c.id for c in dep.containers("web")}  # replaced, not kept
        assert served(dep) == {"v2 vol=vol-note-2 bind=bind-note-2 starts=2"}
        starts = (data / "starts").read_text().split("\n")
        assert [line.split()[0] for line in starts if line] == ["v1", "v2"], starts

        # 2. replica change 1 -> 3 (two more containers of v2, the first one kept)
        second = {c.id for c in dep.containers("web")}
        dep.edit("environments/staging.yaml", "replicas: 1", "replicas: 3", "web x3")
        converges(dep, docker_client)
        third = dep.containers("web")
        assert len(third) == 3 and second <= {c.id for c in third}
        # The new ones started side by side: each counted 3 or 4 lines (after its own).
        seen = served(dep, n=30)
        assert {s.rsplit(" ", 1)[0] for s in seen} == {"v2 vol=vol-note-2 bind=bind-note-2"}
        counts = {s.rsplit(" ", 1)[1] for s in seen}
        assert {"starts=2", "starts=4"} <= counts <= {"starts=2", "starts=3", "starts=4"}, seen
        lines = [line for line in (data / "starts").read_text().splitlines() if line]
        assert [line.split()[0] for line in lines] == ["v1", "v2", "v2", "v2"], lines

        # Every container mounts the same volume and bind directory; neither was
        # removed, nor emptied, with the containers that used them.
        for c in third:
            got = {(m["Type"], m.get("Name") or m["Source"], m["Destination"])
                   for m in c.attrs["Mounts"]}
            assert got == {("volume", volume, "/vol"), ("bind", str(bind), "/bind")}, got
        assert docker_client.volumes.get(volume).name == volume
        assert (bind / "kept").read_text() == "left by the test\n"
        assert sorted(p.name for p in data.iterdir()) == ["note", "starts"]

        # 3. back to one replica: the removed containers take no data with them
        dep.edit("environments/staging.yaml", "replicas: 3", "replicas: 1", "web x1")
        converges(dep, docker_client)
        assert len(dep.containers("web")) == 1
        assert docker_client.volumes.get(volume).name == volume
        assert len((data / "starts").read_text().splitlines()) == 4
        assert (bind / "note").read_text() == "bind-note-2\n"
    finally:
        dep.cleanup()
        docker_client.volumes.get(volume).remove()


def served(dep: Deployment, n: int = 10) -> set[str]:
    """The distinct bodies web answers through HAProxy, as "<revision> <greeting>"."""
    out = set()
    for _ in range(n):
        status, body = dep.get("/")
        assert status == 200, (status, body)
        m = re.fullmatch(r"revision=(\S+) greeting=(.*) host=\S+ path=/\n", body)
        assert m, body
        out.add(f"{m[1]} {m[2]}")
    return out
