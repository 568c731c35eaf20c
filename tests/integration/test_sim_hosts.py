"""Smoke test of tests/hosts_support.py: simulated hosts, each a network namespace with
its own Docker engine and sshd, reachable from the root namespace and from each other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import hosts_support
import paramiko
import pytest
from hosts_support import (
    SimHost,
    SimHosts,
    _owner_id,
    _shim_sockets,
    _wait_for_owner,
    load_image,
    main_engine,
    push_image,
    start_hosts,
    start_registry,
)

pytestmark = pytest.mark.integration

DEADLINE = 30.0
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ssh(sim: SimHosts, host: SimHost, known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or sim.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host.address, username="root", key_filename=str(sim.key),
                   look_for_keys=False, allow_agent=False, timeout=10)
    return client


def http_get(url: str) -> tuple[int, str]:
    """GET ``url`` (no proxy), retried until it answers or the deadline passes."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with NO_PROXY.open(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}: no answer within {DEADLINE} s: {exc}") from exc
            time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def netns_state(prefix: str) -> dict[str, object]:
    """What of a run ``prefix`` exists on the machine."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=False).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           check=False).stdout
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True,
                           check=False).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    return {
        "netns": [n for n in netns.split() if n.startswith(f"{prefix}-h")],
        "links": [line.split(":")[1].strip() for line in links.splitlines()
                  if line.split(":")[1].strip().startswith((f"{prefix}br", f"{prefix}v"))],
        "rules": [r for r in rules.splitlines() if f"rt-sim:{prefix}" in r],
        "mounts": mounts.count(f"/run/rt-sim/{prefix}/"),
        "dir": Path(f"/run/rt-sim/{prefix}").exists(),
        "cgroups": [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/rtsim-{prefix}-h*")],
    }


def test_a_run_another_live_process_owns_is_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """start_hosts removes a crashed run, never one another process still uses."""
    monkeypatch.setattr(hosts_support, "OWNER_WAIT", 0.6)
    (tmp_path / "owner").write_text(_owner_id(1) + "\n")  # alive, and not us
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="in use by pid 1 "):
        _wait_for_owner(tmp_path)
    assert time.monotonic() - t0 >= 0.6
    for owner in (_owner_id(os.getpid()), "1 12345", "999999999 1", ""):
        (tmp_path / "owner").write_text(owner + "\n")  # ours, pid reused, gone, torn
        _wait_for_owner(tmp_path)  # returns at once


def test_start_removes_a_crashed_run_and_close_removes_everything() -> None:
    # A run that "crashed": its dockerd and containerd killed, their containers'
    # shims and processes orphaned, nothing closed.
    crashed = start_hosts(1)
    h1 = crashed.hosts[0]
    load_image(h1, "sample-app:v1")
    c = h1.docker().containers.run("sample-app:v1", detach=True, name="orphan")
    c.reload()
    app_pid = c.attrs["State"]["Pid"]
    assert alive(app_pid)
    shim_sockets = _shim_sockets(int(Path(f"/proc/{app_pid}/stat").read_text().split()[3]))
    assert shim_sockets
    in_ns = subprocess.run(["ip", "netns", "pids", h1.netns], capture_output=True,
                           text=True, check=True).stdout.split()
    for pid in in_ns:
        if Path(f"/proc/{pid}/comm").read_text().strip() in ("dockerd", "containerd"):
            os.kill(int(pid), signal.SIGKILL)

    again = start_hosts(2)
    try:
        assert not alive(app_pid)
        assert not any(os.path.exists(p) for p in shim_sockets)  # the orphaned shim's
        crashed.close()  # only reaps its children: the prefix belongs to the new run
        assert [c.name for c in again.hosts[0].docker().containers.list(all=True)] == []
        assert all(h.docker().ping() for h in again.hosts)
        assert all(h.sshd_ready() for h in again.hosts)
    finally:
        again.close()
    assert netns_state(again.prefix) == {"netns": [], "links": [], "rules": [], "mounts": 0,
                                 "dir": False, "cgroups": []}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHosts]:
    hosts = start_hosts(3)
    try:
        yield hosts
    finally:
        hosts.close()


def test_ssh_into_each_host(sim: SimHosts) -> None:
    for host in sim.hosts:
        client = ssh(sim, host)
        try:
            _, out, err = client.exec_command("ip -4 -o addr show")
            text = out.read().decode()
            assert out.channel.recv_exit_status() == 0, err.read()
        finally:
            client.close()
        assert f"inet {host.address}/24" in text
        others = [h.address for h in sim.hosts if h is not host]
        assert not any(f"inet {a}/" in text for a in others)


def test_wrong_host_key_is_refused(sim: SimHosts, tmp_path: Path) -> None:
    h1, h2 = sim.hosts[:2]
    lines = sim.known_hosts.read_text().splitlines()
    h2_key = next(line.split(None, 1)[1] for line in lines if line.startswith(f"{h2.address} "))
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{h1.address} {h2_key}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        ssh(sim, h1, known_hosts=wrong)


def test_each_host_has_its_own_engine(sim: SimHosts) -> None:
    from reconciler.transport.ssh_channels import open_streamlocal

    roots = set()
    for host in sim.hosts:
        client = host.docker()
        assert client.version()["Version"]
        info = client.info()
        assert info["DockerRootDir"] == host.data_root
        roots.add(info["DockerRootDir"])
        # its own containerd, under its exec root
        assert Path(host.exec_root, "containerd", "containerd.sock").is_socket()
        # and the engine is reachable through the host's sshd (direct-streamlocal)
        ssh_client = ssh(sim, host)
        try:
            transport = ssh_client.get_transport()
            assert transport is not None
            chan = open_streamlocal(transport, host.docker_socket, timeout=10)
            chan.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := chan.recv(4096):
                reply += chunk
            chan.close()
        finally:
            ssh_client.close()
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"OK"), reply
    assert len(roots) == len(sim.hosts)


def test_tcp_from_one_namespace_to_another(sim: SimHosts) -> None:
    h1, h2 = sim.hosts[:2]
    server = sim.popen(
        h1, sys.executable, "-c",
        "import socket, sys\n"
        "s = socket.create_server((sys.argv[1], 7001))\n"
        "print('ready', flush=True)\n"
        "c, peer = s.accept()\n"
        "c.sendall(b'hello from h1')\n"
        "c.close()\n"
        "print(peer[0], flush=True)\n",
        h1.address, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        got = sim.run(
            h2, sys.executable, "-c",
            "import socket, sys\n"
            "with socket.create_connection((sys.argv[1], 7001), timeout=10) as s:\n"
            "    print(s.recv(100).decode())\n",
            h1.address,
        )
        assert got.stdout.strip() == "hello from h1"
        out, err = server.communicate(timeout=DEADLINE)
        assert out.strip() == h2.address, err  # no NAT between the hosts
    finally:
        server.kill()
        server.wait()


def test_loaded_image_serves_on_the_host_address(sim: SimHosts) -> None:
    h1 = sim.hosts[0]
    main = main_engine()
    try:
        want = main.images.get("sample-app:v1").id
    finally:
        main.close()
    assert load_image(h1, "sample-app:v1") == want
    c = h1.docker().containers.run("sample-app:v1", detach=True, name="smoke-app",
                                   ports={"8080/tcp": (h1.address, 18080)})
    try:
        assert http_get(f"http://{h1.address}:18080/healthz") == (200, "ok\n")
        status, body = http_get(f"http://{h1.address}:18080/x")
        assert status == 200 and "revision=v1" in body and "path=/x" in body
        # the port is published on h1 only
        assert sim.run(sim.hosts[1], "ss", "-Htln").stdout.count(":18080") == 0
    finally:
        c.remove(force=True)


def test_registry_push_on_one_host_pull_on_another(sim: SimHosts) -> None:
    registry = start_registry(sim)
    assert registry == f"{sim.gateway}:5000"
    ref = push_image(sim, "sample-app:v2", via=sim.hosts[0])
    assert ref == f"{registry}/sample-app:v2"
    main = main_engine()
    try:
        want = main.images.get("sample-app:v2").id
    finally:
        main.close()
    pulled = sim.hosts[1].docker().images.pull(ref)
    assert pulled.id == want


def test_restart_one_engine(sim: SimHosts) -> None:
    h3 = sim.hosts[2]
    load_image(h3, "sample-app:v3")
    h3.docker().containers.run("sample-app:v3", detach=True, name="keeps",
                               restart_policy={"Name": "always"},
                               ports={"8080/tcp": (h3.address, 18083)})
    assert http_get(f"http://{h3.address}:18083/healthz")[0] == 200
    h3.stop_docker()
    assert h3.dockerd_pid() is None and not h3.docker_ready()
    assert sim.hosts[0].docker().ping()  # the others keep running
    h3.start_docker()
    assert http_get(f"http://{h3.address}:18083/healthz")[0] == 200
    assert [c.name for c in h3.docker().containers.list()] == ["keeps"]
