"""The container image: the top-level Dockerfile, built on a base made by .ci/base-image.

The module builds the image once (making the base first when it is missing: that needs
root and Debian's mirror, a few minutes the first time on a machine) and checks what a
user does with it: ``--help``, ``validate`` (the installed package ships the schemas)
and a dry run against the host's engine through the mounted Docker socket. Nothing is
skipped: a machine that cannot build the image fails here.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import docker
import pytest
from repo_support import scratch_repo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BASE = "reconciler-base:bookworm"
IMAGE = "reconciler:test"
WHEELS = ROOT / "build" / "wheels"  # in the build context; see the Dockerfile
SOCKET = "/var/run/docker.sock"
PYTHON = "3.11"  # Debian 12's python3, the base image's interpreter


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} took more than {timeout:.0f} s:\n{exc.stdout}\n{exc.stderr}")


def _require(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _image_id(ref: str) -> str | None:
    proc = _run(["docker", "image", "inspect", "-f", "{{.Id}}", ref], 60)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _download_wheels() -> None:
    """Wheels of the dependencies (and of the build backend) for the image's Python.

    Downloaded on the host, which reaches PyPI; build containers do not (see the
    Dockerfile). Tagged for CPython 3.11 on glibc Linux whatever this interpreter is;
    done again only when the requirements in pyproject.toml change.
    """
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [*meta["build-system"]["requires"], "wheel", *meta["project"]["dependencies"]]
    arch = platform.machine()
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)]
    platforms += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON,
            *(a for p in platforms for a in ("--platform", p))]
    stamp = WHEELS / ".requirements"
    wanted = "\n".join([*reqs, *args]) + "\n"
    if stamp.exists() and stamp.read_text() == wanted and any(WHEELS.glob("*.whl")):
        return
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    proc = _run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(WHEELS),
                 *args, *reqs], 600)
    _require(proc, "pip download of the image's wheels")
    stamp.write_text(wanted)


@pytest.fixture(scope="module")
def image(docker_client: docker.DockerClient) -> str:
    """The image, built from the working tree; the base is made when it is missing."""
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is missing (.ci/setup installs docker.io)")
    t0 = time.monotonic()
    if _image_id(BASE) is None:
        _require(_run(["bash", str(ROOT / ".ci" / "base-image")], 1500), ".ci/base-image")
    t1 = time.monotonic()
    _download_wheels()
    t2 = time.monotonic()
    env = dict(os.environ)
    if _run(["docker", "buildx", "version"], 30).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"  # the classic builder; BuildKit needs buildx here
    before = _image_id(IMAGE)
    build = _run(["docker", "build", "--force-rm", "--build-arg", f"BASE={BASE}", "-t", IMAGE,
                  str(ROOT)], 900, env)
    _require(build, "docker build")
    after = _image_id(IMAGE)
    if before and before != after:  # the previous build, now untagged
        _run(["docker", "image", "rm", before], 60)
    print(f"\nimage {IMAGE}: base {t1 - t0:.1f} s, wheels {t2 - t1:.1f} s, "
          f"build {time.monotonic() - t2:.1f} s")
    return IMAGE


def _docker_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return _run(["docker", "run", "--rm", *args], timeout)


def test_image_runs_watch_as_a_non_root_user_by_default(image: str) -> None:
    proc = _run(["docker", "image", "inspect", image], 60)
    _require(proc, "docker image inspect")
    config = json.loads(proc.stdout)[0]["Config"]
    assert config["Entrypoint"] == ["reconcile"]
    assert config["Cmd"] == ["watch"]
    assert config["User"] == "reconciler"
    who = _docker_run("--entrypoint", "id", image, "-u")
    assert who.returncode == 0, who.stderr
    assert who.stdout.strip() != "0"


def test_help_lists_the_commands(image: str) -> None:
    proc = _docker_run(image, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Commands:" in proc.stdout
    for command in ("plan", "apply", "status", "history", "validate", "diff"):
        assert re.search(rf"^\s+{command}\b", proc.stdout, re.M), (command, proc.stdout)


def test_installed_package_ships_the_schemas(image: str, tmp_path: Path) -> None:
    # A regular folder in the venv, not the source tree's symlink (it would dangle).
    probe = _docker_run(
        "--entrypoint", "python", image, "-c",
        "import json, reconciler.desired.schema as s; d = s.SCHEMA_DIR; "
        "print(json.dumps([str(d), d.is_symlink(), sorted(p.name for p in d.glob('*.json'))]))")
    assert probe.returncode == 0, probe.stderr
    where, is_link, names = json.loads(probe.stdout)
    assert where.startswith("/opt/reconciler/lib/") and not is_link, where
    assert names == sorted(p.name for p in (ROOT / "schemas").glob("*.json"))

    repo = scratch_repo(tmp_path)
    proc = _docker_run("-v", f"{repo}:/repo:ro", image, "validate", "--worktree", "--repo", "/repo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A broken manifest is reported through those schemas, with its line.
    broken = tmp_path / "broken"
    shutil.copytree(repo, broken)
    svc = broken / "services" / "web.yaml"
    svc.write_text(svc.read_text().replace("replicas: 2", "replicas: two"))
    proc = _docker_run("-v", f"{broken}:/repo:ro", image, "validate", "--worktree", "--repo", "/repo")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "web.yaml" in proc.stderr and "replicas" in proc.stderr, proc.stderr


def test_plan_observes_the_host_engine_through_the_mounted_socket(
    image: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    assert stat.S_ISSOCK(os.stat(SOCKET).st_mode), f"{SOCKET} is not a socket"
    # Owned by root here, read by uid 10001 in the container: read through the
    # reconciler's mirror, with no safe.directory '*' in the image.
    repo = scratch_repo(tmp_path)
    # The non-root user reaches the socket through its group (see the Dockerfile).
    mounts = ["-v", f"{repo}:/repo:ro", "-v", f"{SOCKET}:{SOCKET}",
              "--group-add", str(os.stat(SOCKET).st_gid)]
    cmd = ["plan", "--repo", "/repo", "--env", "staging", "--state-dir", "/tmp/state"]
    running = [c.name for c in docker_client.containers.list(
        all=True, filters={"label": "io.reconciler.environment=staging"})]

    text = _docker_run(*mounts, image, *cmd)
    assert text.returncode == 2, text.stdout + text.stderr
    assert "Plan for environment staging" in text.stdout, text.stdout
    assert re.search(r"start container r[0-9a-f]{8}-staging-web-v1-", text.stdout), (
        text.stdout, running)

    js = _docker_run(*mounts, image, *cmd, "-o", "json")
    assert js.returncode == 2, js.stdout + js.stderr
    plan = json.loads(js.stdout)
    starts = [a for a in plan["actions"] if a["kind"] == "start-container"]
    assert {a["service"] for a in starts} == {"web", "api"}, (plan, running)
    # The image ids come from the host's engine: it was observed, not guessed.
    host_id = docker_client.images.get("sample-app:v1").id
    assert {a["image_id"] for a in starts} == {host_id}


def test_image_trusts_no_repository_config(image: str, tmp_path: Path) -> None:
    """No safe.directory wildcard; a mounted repository's fsmonitor never runs."""
    wildcard = _docker_run("--entrypoint", "git", image, "config", "--system", "--get-all",
                           "safe.directory")
    assert wildcard.returncode == 1 and not wildcard.stdout.strip(), wildcard.stdout
    repo = scratch_repo(tmp_path)
    hook = repo / "evil.sh"  # inside the mount: the path is the same in the container
    hook.write_text("#!/bin/sh\ntouch /tmp/MARKER\n")
    hook.chmod(0o755)
    subprocess.run(["git", "-C", str(repo), "config", "core.fsmonitor", "/repo/evil.sh"],
                   check=True)
    probe = _docker_run("-v", f"{repo}:/repo:ro", "--entrypoint", "sh", image, "-c",
                        "reconcile validate --repo /repo; echo exit=$?; ls /tmp/MARKER")
    assert "exit=0" in probe.stdout, probe.stdout + probe.stderr
    assert "No such file" in probe.stderr, "the repository's fsmonitor ran in the image"


HAPROXY_PROBE = """
import json, pathlib
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.paths import HAProxyPaths
h = HAProxy(HAProxyPaths.embedded(pathlib.Path("/var/lib/reconciler"), "img"))
run_as = h.run_as()
h.install("\\n".join([
    "global",
    f"    stats socket {h.paths.stats_socket} mode 600 level admin expose-fd listeners",
    *run_as.global_lines(),
    "defaults", "    mode http", "    timeout connect 1s", "    timeout client 1s",
    "    timeout server 1s",
    "frontend f", "    bind 127.0.0.1:80", "    http-request return status 200",
]) + "\\n")
h.start()
def status(pid):
    lines = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
    keep = {l.split(":")[0]: l.split(":", 1)[1].split() for l in lines
            if l.startswith(("Uid", "Groups"))}
    return keep  # (/proc/PID/root of another uid needs CAP_SYS_PTRACE: checked on the host)
procs = h.procs()
print(json.dumps({"run_as": [run_as.user, run_as.group, run_as.chroot],
                  "master": status(procs.master_pid),
                  "workers": [status(p) for p in procs.current_pids]}))
"""  # HAProxy ends with the container (its PID 1, this script, exits)


def test_haproxy_in_the_image_never_holds_the_docker_group(image: str) -> None:
    gid = str(os.stat(SOCKET).st_gid)
    # The default user with the socket's group: refused to start HAProxy at all.
    refused = _docker_run("-v", f"{SOCKET}:{SOCKET}", "--group-add", gid, "--entrypoint",
                          "python", image, "-c", HAPROXY_PROBE)
    assert refused.returncode != 0
    assert f"holds group {gid}" in refused.stderr, refused.stderr
    # As root (the documented way to run watch/apply): the workers run as haproxy, in
    # the chroot, with no group at all; port 80 is bound by the root master.
    ok = _docker_run("--user", "root", "-v", f"{SOCKET}:{SOCKET}", "--entrypoint", "python",
                     image, "-c", HAPROXY_PROBE)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    found = json.loads(ok.stdout.strip().splitlines()[-1])
    assert found["run_as"][:2] == ["haproxy", "haproxy"], found
    assert found["master"]["Uid"][0] == "0", found  # binds ports, owns the sockets
    assert found["workers"], found
    for worker in found["workers"]:
        assert worker["Uid"][0] != "0" and worker["Groups"] == [], worker
