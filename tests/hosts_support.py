"""Simulated hosts on this machine: a network namespace, a dockerd and an sshd each.

``start_hosts(n)`` gives ``n`` hosts ``h1..hn`` that look like separate machines on one
LAN: each has its own network namespace with its own IPv4 address (10.213.K.11,
10.213.K.12, ...), its own Docker engine (data root, exec root, unix socket) and its
own sshd on port 22 that lets root in with one client key. The namespaces hang off a
bridge in the root namespace (10.213.K.1, ``SimHosts.gateway``), so they reach the root
namespace and each other. Each run claims a /24 of its own (K: 0 for the default prefix
"rt", another stable one per prefix, the next free one when taken), so runs with
different prefixes (several test sessions) work side by side. ``start_registry`` adds a
Docker registry on the gateway that every simulated engine trusts
(``--insecure-registry``).

Only the network differs: every host shares this machine's filesystem and binaries
(haproxy, docker CLI, busybox...). Everything a run creates lives under
``/run/rt-sim/<prefix>/`` and is named after the prefix (netns ``<prefix>-hN``, bridge
``<prefix>br0``, veths ``<prefix>vN``, cgroups ``/rtsim-<prefix>-hN``, an iptables rule
commented ``rt-sim:<prefix>``), so ``start_hosts`` can remove what a crashed run left
behind before it starts, and ``close()`` removes all of it. A run still owned by another
live process (``<base>/owner``: its pid and start time) is waited for, not removed. Needs root, iproute2,
nsenter, docker.io and openssh-server (``.ci/setup`` installs them).

The filesystem being shared matters to what runs "on" a host: over SSH, host hN's
``/var/run/docker.sock`` is this machine's main engine, so point the reconciler at
``SimHost.docker_socket`` (inventory ``docker_socket``) and give each host its own
``SimHost.state_dir`` (inventory ``state_dir``) for HAProxy's files and sockets.

dockerd runs under ``nsenter --net=`` (not ``ip netns exec``, which remounts /sys and
hides the cgroup mounts: dockerd then fails with "Devices cgroup isn't mounted"). Each
engine starts its own containerd under its exec root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

BASE = Path("/run/rt-sim")
NETWORK = "10.213.{k}"        # a /24 per run (see _claim_network); hosts .11, .12...; gateway .1
# The prefix start_hosts uses when none is given: RT_SIM_PREFIX lets two test sessions on
# one machine use different ones and run side by side (one prefix: the later one waits).
DEFAULT_PREFIX = os.environ.get("RT_SIM_PREFIX", "rt")
BIP = "172.29.{n}.1/24"      # docker0 of host N inside its namespace (main docker0: 172.17/16)
REGISTRY_PORT = 5000
START_TIMEOUT = 60.0
# How long start_hosts waits for a run of another live process to close the same prefix
# (two test sessions with one prefix: the later one waits; see DEFAULT_PREFIX).
OWNER_WAIT = float(os.environ.get("RT_SIM_OWNER_WAIT", "900"))
SSHD = "/usr/sbin/sshd"

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,5}")
# Proxy settings would send the engines' and registry's requests to the gateway elsewhere.
_DROP_ENV = {"DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH",
             "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
             "no_proxy", "NO_PROXY"}


class SimCommandError(subprocess.CalledProcessError):
    """A command run in a host's namespace failed; the message carries its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _DROP_ENV}


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and cp.returncode != 0:
        raise SimCommandError(cp.returncode, list(argv), cp.stdout, cp.stderr)
    return cp


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _owner_id(pid: int) -> str:
    """``pid`` and its start time (a pid number can be reused by another process)."""
    try:
        return f"{pid} {Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return ""


def _wait_for_owner(base: Path) -> None:
    """Wait while another live process owns the run in ``base`` (its ``owner`` file names
    it): start_hosts removes what a *crashed* run left, never a run still in use. Raises
    TimeoutError after OWNER_WAIT seconds."""
    deadline = time.monotonic() + OWNER_WAIT
    while True:
        try:
            owner = (base / "owner").read_text().strip()
        except OSError:
            return  # no run, or one of an older harness (treated as crashed)
        pid = int(owner.split()[0]) if owner.split() and owner.split()[0].isdigit() else 0
        if pid == os.getpid() or not pid or _owner_id(pid) != owner:
            return  # ours, or its process is gone: a crashed run
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"simulated hosts {base} are in use by pid {pid} ({_cmdline(pid)}) for more "
                f"than {OWNER_WAIT:.0f} s")
        time.sleep(0.5)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pid_from(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and its command line has ``marker``
    (a pid file can outlive its process and the number be reused)."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) and marker in _cmdline(pid) else None


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` for ``pids`` to exit; returns those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


def _unix_ping(path: str) -> bool:
    """True when a Docker engine answers ``GET /_ping`` on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return s.recv(64).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    except OSError:
        return False


def _ssh_banner(address: str) -> bool:
    """True when sshd answers on ``address``:22 with its banner."""
    try:
        with socket.create_connection((address, 22), timeout=2) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@dataclass
class SimHost:
    """One simulated machine: a network namespace with its own dockerd and sshd."""

    name: str            # "h1", "h2", ...
    address: str         # 10.213.K.(10+N)
    netns: str           # "<prefix>-hN" (/run/netns/<netns>)
    docker_socket: str   # /run/rt-sim/<prefix>/hN/docker.sock
    data_root: str       # /run/rt-sim/<prefix>/hN/data
    index: int = 0
    dir: Path = Path()   # /run/rt-sim/<prefix>/hN: configs, logs, pid files
    exec_root: str = ""
    cgroup_parent: str = ""
    bip: str = ""
    registry: str = ""   # the --insecure-registry given to dockerd
    # Directories this host does not share with the machine: its sshd (and so whatever
    # runs over SSH on it, HAProxy included) sees an empty tmpfs of its own at each of
    # them (a private mount namespace). Takes effect at the next start of its sshd.
    own_dirs: tuple[str, ...] = ()
    _dockerd: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _client: Any = field(default=None, repr=False, compare=False)

    # ---- paths ---------------------------------------------------------------------
    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def docker_host(self) -> str:
        """``DOCKER_HOST`` value for the docker CLI (``unix://...``)."""
        return f"unix://{self.docker_socket}"

    @property
    def state_dir(self) -> str:
        """An empty directory of this host's own (the filesystem is shared: give the
        reconciler this as the host's ``state_dir`` so HAProxy files do not collide)."""
        return str(self.dir / "state")

    @property
    def dockerd_pidfile(self) -> Path:
        return self.dir / "dockerd.pid"

    @property
    def dockerd_log(self) -> Path:
        return self.dir / "dockerd.log"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def sshd_pidfile(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def sshd_log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def nsenter(self, *argv: str) -> list[str]:
        """``argv`` prefixed to run in this host's network namespace."""
        return ["nsenter", f"--net={self.netns_path}", *argv]

    # ---- Docker --------------------------------------------------------------------
    def docker(self) -> docker.DockerClient:
        """A Docker SDK client on this host's engine (one per host, reused)."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.docker_host, timeout=60)
        return self._client  # type: ignore[no-any-return]

    def dockerd_argv(self) -> list[str]:
        argv = [
            "dockerd",
            "--config-file", str(self.dir / "daemon.json"),
            "--data-root", self.data_root,
            "--exec-root", self.exec_root,
            "-H", self.docker_host,
            "--pidfile", str(self.dockerd_pidfile),
            "--bip", self.bip,
            "--cgroup-parent", self.cgroup_parent,
            "--log-level", "warn",
        ]
        if self.registry:
            argv += ["--insecure-registry", self.registry]
        return self.nsenter(*argv)

    def spawn_docker(self) -> None:
        """Start this host's dockerd in the background (see ``wait_docker``)."""
        if self.dockerd_pid() is not None:
            raise RuntimeError(f"{self.name}: dockerd already running")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.docker_socket)
        with self.dockerd_log.open("ab") as log:
            self._dockerd = subprocess.Popen(
                self.dockerd_argv(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
            )

    def docker_ready(self) -> bool:
        if self._dockerd is not None and self._dockerd.poll() is not None:
            raise RuntimeError(
                f"{self.name}: dockerd exited with {self._dockerd.returncode} during start-up; "
                f"{self.dockerd_log}:\n{_tail(self.dockerd_log)}"
            )
        return os.path.exists(self.docker_socket) and _unix_ping(self.docker_socket)

    def wait_docker(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.docker_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: dockerd did not answer on {self.docker_socket} within "
                    f"{timeout:.0f} s; {self.dockerd_log}:\n{_tail(self.dockerd_log)}"
                )
            time.sleep(0.05)

    def start_docker(self) -> None:
        """Start this host's dockerd and wait until it answers (deadline 60 s)."""
        self.spawn_docker()
        self.wait_docker()

    def dockerd_pid(self) -> int | None:
        return _pid_from(self.dockerd_pidfile, self.exec_root)

    def stop_docker(self, timeout: float = 30.0) -> None:
        """Stop this host's dockerd (SIGTERM; SIGKILL after ``timeout``) and wait for it.

        Its containers stop with it (no live-restore) and come back on ``start_docker``
        according to their restart policies, as on a real host.
        """
        pid = self.dockerd_pid()
        if pid is None and self._dockerd is not None and self._dockerd.poll() is None:
            pid = self._dockerd.pid
        if pid is not None:
            _kill(pid, signal.SIGTERM)
            if _wait_gone([pid], timeout):
                _kill(pid, signal.SIGKILL)
                _wait_gone([pid], 10)
        if self._dockerd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._dockerd.wait(timeout=5)
            self._dockerd = None

    # ---- sshd ----------------------------------------------------------------------
    def sshd_argv(self) -> list[str]:
        """sshd in this host's network namespace; with ``own_dirs``, also in a mount
        namespace of its own where a fresh tmpfs is mounted on each of them (sh execs
        sshd: the pid stays the one of the pid file)."""
        sshd = [SSHD, "-D", "-f", str(self.sshd_config), "-E", str(self.sshd_log)]
        if not self.own_dirs:
            return self.nsenter(*sshd)
        mounts = [f"mount -t tmpfs -o mode=0755,size=8m rtsim-own {shlex.quote(d)}"
                  for d in self.own_dirs]
        script = " && ".join([*mounts, f"exec {shlex.join(sshd)}"])
        return self.nsenter("unshare", "--mount", "--propagation", "private", "sh", "-c", script)

    def spawn_sshd(self) -> None:
        if self.sshd_pid() is not None:
            raise RuntimeError(f"{self.name}: sshd already running")
        self._sshd = subprocess.Popen(
            self.sshd_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=_env(), start_new_session=True,
        )

    def sshd_ready(self) -> bool:
        if self._sshd is not None and self._sshd.poll() is not None:
            raise RuntimeError(
                f"{self.name}: sshd exited with {self._sshd.returncode}; "
                f"{self.sshd_log}:\n{_tail(self.sshd_log)}"
            )
        return _ssh_banner(self.address)

    def wait_sshd(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.sshd_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: sshd did not answer on {self.address}:22 within "
                    f"{timeout:.0f} s; {self.sshd_log}:\n{_tail(self.sshd_log)}"
                )
            time.sleep(0.05)

    def start_sshd(self) -> None:
        """Start this host's sshd and wait until port 22 answers."""
        self.spawn_sshd()
        self.wait_sshd()

    def sshd_pid(self) -> int | None:
        return _pid_from(self.sshd_pidfile, str(self.sshd_config))

    def stop_sshd(self) -> None:
        """Stop the listening sshd (open sessions keep their own processes)."""
        pid = self.sshd_pid()
        if pid is None and self._sshd is not None and self._sshd.poll() is None:
            pid = self._sshd.pid
        if pid is not None:
            _kill(pid, signal.SIGTERM)
            if _wait_gone([pid], 10):
                _kill(pid, signal.SIGKILL)
        if self._sshd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._sshd.wait(timeout=5)
            self._sshd = None


@dataclass
class SimHosts:
    """The hosts of one ``start_hosts`` call; ``close()`` removes all of them."""

    hosts: list[SimHost]
    key: Path            # client ed25519 private key, authorized for root on every host
    known_hosts: Path    # every host's key by address (plain, port 22)
    gateway: str         # the root namespace's address on the bridge
    prefix: str = "rt"
    base: Path = Path()  # /run/rt-sim/<prefix>
    bridge: str = ""
    registry: str | None = None   # "10.213.K.1:5000" once start_registry ran
    run_id: str = ""     # also in <base>/run-id while this run owns the prefix
    _registry_proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __getitem__(self, name: str) -> SimHost:
        """The host called ``name`` ("h1"...)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def run(self, host: SimHost, *argv: str, check: bool = True, timeout: float = 60,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host``'s network namespace; text output captured.

        ``check`` raises SimCommandError (with the output) on a non-zero exit.
        """
        cp = subprocess.run(host.nsenter(*argv), capture_output=True, text=True, check=False,
                            timeout=timeout, **kwargs)
        if check and cp.returncode != 0:
            raise SimCommandError(cp.returncode, list(argv), cp.stdout, cp.stderr)
        return cp

    def popen(self, host: SimHost, *argv: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host``'s network namespace in the background (the caller
        ends it; close() kills whatever is left in the namespace)."""
        return subprocess.Popen(host.nsenter(*argv), **kwargs)

    def ssh_options(self) -> list[str]:
        """Options for OpenSSH's ``ssh`` to reach the hosts as root with the client key."""
        return ["-i", str(self.key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "GlobalKnownHostsFile=/dev/null", "-l", "root"]

    def close(self) -> None:
        """Stop every dockerd, containerd, container, sshd and the registry; delete the
        namespaces, veths, bridge, iptables rule, cgroups and files. Safe to call twice;
        leaves alone a later run that took over the prefix."""
        try:
            owner = (self.base / "run-id").read_text().strip()
        except OSError:
            owner = ""
        ours = owner in ("", self.run_id)
        hosts = [h for h in self.hosts if ours and h.dockerd_pid() is not None]
        if hosts:
            # Removing the containers first lets each dockerd stop at once and cleanly
            # (shims remove their sockets, mounts go away).
            with ThreadPoolExecutor(len(hosts)) as ex:
                list(ex.map(_remove_containers, hosts))
        if self._registry_proc is not None:
            self._registry_proc.terminate()
        if ours:
            _cleanup(self.prefix, self.bridge)
        for h in self.hosts:
            for proc in (h._dockerd, h._sshd):  # reap our children
                if proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
            h._dockerd = h._sshd = None
            if h._client is not None:
                with contextlib.suppress(Exception):
                    h._client.close()
                h._client = None
        if self._registry_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._registry_proc.wait(timeout=5)
            self._registry_proc = None
        self.registry = None

    def __enter__(self) -> SimHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove_containers(host: SimHost) -> None:
    with contextlib.suppress(Exception):
        client = docker.DockerClient(base_url=host.docker_host, timeout=20)
        try:
            containers = client.containers.list(all=True)
            if containers:
                with ThreadPoolExecutor(min(8, len(containers))) as ex:
                    list(ex.map(lambda c: c.remove(force=True, v=True), containers))
        finally:
            client.close()


# ---- cleanup -------------------------------------------------------------------------
def _names(prefix: str) -> tuple[str, Path, str, str]:
    """bridge, base dir, cgroup-parent stem, iptables comment for ``prefix``."""
    return f"{prefix}br0", BASE / prefix, f"rtsim-{prefix}-h", f"rt-sim:{prefix}"


def _forward_rule(bridge: str, comment: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", bridge, "-m", "comment", "--comment", comment,
            "-j", "ACCEPT"]


def _netns_names(prefix: str) -> list[str]:
    pat = re.compile(rf"{re.escape(prefix)}-h\d+")
    out = _sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and pat.fullmatch(line.split()[0])]


def _cgroup_dirs(stem: str) -> list[Path]:
    """Every cgroup directory (v1 controllers and v2) under a ``/<stem>N`` parent,
    deepest first."""
    root = Path("/sys/fs/cgroup")
    tops: list[Path] = []
    with contextlib.suppress(OSError):
        for ctrl in root.iterdir():
            with contextlib.suppress(OSError):
                tops += [d for d in ctrl.glob(f"{stem}*") if d.is_dir()]
            if ctrl.name.startswith(stem):  # pure cgroup v2 mounted at /sys/fs/cgroup
                tops.append(ctrl)
    found: list[Path] = []
    for top in tops:
        found += [Path(dirpath) for dirpath, _, _ in os.walk(top)]
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
    return pids


def _shim_sockets(pid: int) -> list[str]:
    """The unix socket files a containerd shim listens on (/run/containerd/s/...): a
    killed shim leaves them behind."""
    try:
        inodes = {os.readlink(fd)[8:-1] for fd in Path(f"/proc/{pid}/fd").iterdir()
                  if os.readlink(fd).startswith("socket:[")}
        table = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return []
    return [f[7] for f in (line.split() for line in table)
            if len(f) >= 8 and f[6] in inodes and f[7].startswith("/run/containerd/s/")]


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == str(base):
                points.append(point)
    return sorted(set(points), key=len, reverse=True)


def _cleanup(prefix: str, bridge: str = "") -> None:
    """Remove everything of the run ``prefix``: processes, mounts, namespaces, links,
    iptables rule, cgroups, files. Works from what is on the machine (pid files,
    ``ip netns``, /proc), so it also clears what a crashed earlier run left."""
    default_bridge, base, stem, comment = _names(prefix)
    bridge = bridge or default_bridge
    netns = _netns_names(prefix)

    # 1. Ask dockerd (it stops containerd and its containers), sshd and the registry to
    #    stop; by their pid files, checked against their command lines.
    polite: list[int] = []
    for d in sorted(base.glob("h*")) if base.is_dir() else []:
        for pidfile, marker in ((d / "dockerd.pid", str(d)), (d / "sshd.pid", str(d)),):
            pid = _pid_from(pidfile, marker)
            if pid is not None:
                polite.append(pid)
    reg = _pid_from(base / "registry" / "registry.pid", str(base))
    if reg is not None:
        polite.append(reg)
    for pid in polite:
        _kill(pid, signal.SIGTERM)
    _wait_gone(polite, 20)

    # 2. Kill what is left in the namespaces (dockerd, containerd, shims, docker-proxy,
    #    sshd sessions, test processes), then the containers' processes by cgroup.
    #    Repeat: a dying parent can leave children for a moment.
    deadline = time.monotonic() + 20
    sockets: set[str] = set()
    while True:
        pids: set[int] = set()
        for ns in netns:
            out = _sh("ip", "netns", "pids", ns, check=False).stdout
            pids |= {int(x) for x in out.split() if x.isdigit()}
        pids |= _cgroup_pids(_cgroup_dirs(stem))
        pids |= {p for p in polite if _alive(p)}
        pids.discard(os.getpid())
        pids = {p for p in pids if _alive(p)}
        if not pids or time.monotonic() > deadline:
            break
        # Every shim's sockets first: a shim whose container was killed may exit on
        # its own a moment later, and it leaves its socket files behind.
        for pid in pids:
            if "containerd-shim" in _cmdline(pid):
                sockets.update(_shim_sockets(pid))
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        _wait_gone(list(pids), 5)
    for path in sockets:
        with contextlib.suppress(OSError):
            os.unlink(path)

    # 3. Mounts a killed dockerd left (overlay layers, shm, netns bind mounts).
    for point in _mounts_under(base):
        _sh("umount", "-l", point, check=False)

    # 4. Network: namespaces (their veth ends go with them), bridge, iptables rule.
    for ns in netns:
        _sh("ip", "netns", "delete", ns, check=False)
    out = _sh("ip", "-o", "link", "show", check=False).stdout
    veth = re.compile(rf"{re.escape(prefix)}v\d+")
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if veth.fullmatch(name):
            _sh("ip", "link", "delete", name, check=False)
    _sh("ip", "link", "delete", bridge, check=False)
    for _ in range(10):
        if _sh("iptables", "-D", *_forward_rule(bridge, comment), check=False).returncode:
            break

    # 5. Files and cgroups.
    shutil.rmtree(base, ignore_errors=True)
    for d in _cgroup_dirs(stem):
        with contextlib.suppress(OSError):
            d.rmdir()


# ---- start ---------------------------------------------------------------------------
def _write_sshd_config(host: SimHost, authorized_keys: Path) -> None:
    host.sshd_config.write_text(
        f"""# sshd of simulated host {host.name} (tests/hosts_support.py)
ListenAddress {host.address}
Port 22
HostKey {host.host_key}
PidFile {host.sshd_pidfile}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
UseDNS no
PrintMotd no
PrintLastLog no
MaxSessions 100
MaxStartups 100:30:200
LogLevel INFO
Subsystem sftp internal-sftp
"""
    )


def _claim_network(prefix: str, bridge: str) -> str:
    """Create ``bridge`` with the gateway address of a /24 no interface has yet and
    return that network ("10.213.K"). Under a lock: two runs starting at once must not
    take the same one. K starts at 0 for "rt" (the first harness's only network), at a
    value stable per other prefix, and moves to the next free one when taken."""
    BASE.mkdir(parents=True, exist_ok=True)
    with open(BASE / ".network.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        taken = _sh("ip", "-o", "-4", "addr", "show", check=False).stdout
        first = 0 if prefix == "rt" else 1 + zlib.crc32(prefix.encode()) % 254
        for k in (first + i for i in range(256)):
            network = NETWORK.format(k=k % 256)
            if f" {network}.1/" not in taken:
                break
        else:
            raise RuntimeError("no free 10.213.K.0/24 for simulated hosts")
        _sh("ip", "link", "add", bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{network}.1/24", "dev", bridge)
    return network


def _setup_network(prefix: str, bridge: str, gateway: str, comment: str,
                   hosts: list[SimHost]) -> None:
    _sh("ip", "link", "set", bridge, "up")
    # Namespace-to-namespace traffic is bridged; with br_netfilter it passes the root
    # namespace's FORWARD chain, whose policy the main dockerd sets to DROP.
    chain, *rule = _forward_rule(bridge, comment)
    _sh("iptables", "-I", chain, "1", *rule)

    def batch(lines: list[str], *opts: str) -> None:
        cp = subprocess.run(["ip", *opts, "-batch", "-"], input="\n".join(lines) + "\n",
                            text=True, capture_output=True, check=False, timeout=60)
        if cp.returncode:
            raise SimCommandError(cp.returncode, ["ip", *opts, "-batch", "-", *lines],
                                  cp.stdout, cp.stderr)

    root = []
    for h in hosts:
        outer, inner = f"{prefix}v{h.index}", f"{prefix}p{h.index}"
        root += [
            f"netns add {h.netns}",
            f"link add {outer} type veth peer name {inner}",
            f"link set {inner} netns {h.netns}",
            f"link set {outer} master {bridge} up",
        ]
    batch(root)
    for h in hosts:
        batch([
            f"link set {prefix}p{h.index} name eth0",
            f"addr add {h.address}/24 dev eth0",
            "link set eth0 up",
            "link set lo up",
            f"route add default via {gateway}",
        ], "-n", h.netns)


def start_hosts(count: int, *, prefix: str = DEFAULT_PREFIX) -> SimHosts:
    """Create ``count`` simulated hosts h1..h<count> and wait until each one's dockerd
    and sshd answer. First removes what an earlier run with ``prefix`` left behind.

    ``prefix``: 1-6 lowercase letters/digits (it goes into interface names).
    """
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r}: 1-6 lowercase letters or digits, letter first")
    if not 1 <= count <= 200:
        raise ValueError(f"count {count}: 1..200")
    if os.geteuid() != 0:
        raise RuntimeError("simulated hosts need root (network namespaces, dockerd)")
    missing = [c for c in ("ip", "nsenter", "dockerd", "ssh-keygen", "iptables")
               if shutil.which(c) is None] + ([SSHD] if not os.access(SSHD, os.X_OK) else [])
    if missing:
        raise RuntimeError(f"missing {missing}: run .ci/setup (iproute2, util-linux, "
                           "docker.io, openssh-client, openssh-server, iptables)")

    bridge, base, stem, comment = _names(prefix)
    _wait_for_owner(base)
    _cleanup(prefix, bridge)
    base.mkdir(parents=True)
    (base / "owner").write_text(_owner_id(os.getpid()) + "\n")
    base.chmod(0o700)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    try:
        network = _claim_network(prefix, bridge)
    except BaseException:
        _cleanup(prefix, bridge)
        raise
    gateway = f"{network}.1"

    registry = f"{gateway}:{REGISTRY_PORT}"
    hosts: list[SimHost] = []
    for n in range(1, count + 1):
        d = base / f"h{n}"
        hosts.append(SimHost(
            name=f"h{n}", address=f"{network}.{10 + n}", netns=f"{prefix}-h{n}",
            docker_socket=str(d / "docker.sock"), data_root=str(d / "data"), index=n,
            dir=d, exec_root=str(d / "x"), cgroup_parent=f"/{stem}{n}",
            bip=BIP.format(n=n), registry=registry,
        ))
    sim = SimHosts(hosts=hosts, key=base / "id_ed25519", known_hosts=base / "known_hosts",
                   gateway=gateway, prefix=prefix, base=base, bridge=bridge,
                   run_id=uuid.uuid4().hex)
    (base / "run-id").write_text(sim.run_id + "\n")
    try:
        for h in hosts:
            h.dir.mkdir()
            Path(h.state_dir).mkdir()
        # Keys: the client's and one host key per host, generated in parallel.
        keygens = [
            subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                              "-f", str(path)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for path in [sim.key, *(h.host_key for h in hosts)]
        ]
        for p in keygens:
            _, err = p.communicate(timeout=60)
            if p.returncode:
                raise RuntimeError(f"ssh-keygen failed: {err.decode(errors='replace')}")
        authorized = base / "authorized_keys"
        authorized.write_text(sim.key.with_suffix(".pub").read_text())
        sim.known_hosts.write_text("".join(
            f"{h.address} {' '.join(Path(f'{h.host_key}.pub').read_text().split()[:2])}\n"
            for h in hosts
        ))
        for h in hosts:
            (h.dir / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json
            _write_sshd_config(h, authorized)

        _setup_network(prefix, bridge, gateway, comment, hosts)

        for h in hosts:
            h.spawn_docker()
            h.spawn_sshd()
        deadline = time.monotonic() + START_TIMEOUT
        for h in hosts:
            h.wait_sshd(max(1.0, deadline - time.monotonic()))
            h.wait_docker(max(1.0, deadline - time.monotonic()))
    except BaseException:
        sim.close()
        raise
    return sim


# ---- registry and images -------------------------------------------------------------
def start_registry(hosts: SimHosts, timeout: float = 30.0) -> str:
    """Start Debian's docker-registry on ``<gateway>:5000`` (storage under the run's
    directory; no auth, plain HTTP: every simulated dockerd has it as an insecure
    registry) and wait until it answers. Returns ``"<gateway>:5000"``; close() stops it."""
    if hosts.registry is not None:
        return hosts.registry
    exe = shutil.which("docker-registry")
    if exe is None:
        raise RuntimeError("docker-registry not found: run .ci/setup (package docker-registry)")
    d = hosts.base / "registry"
    (d / "data").mkdir(parents=True, exist_ok=True)
    addr = f"{hosts.gateway}:{REGISTRY_PORT}"
    config = d / "config.yml"
    config.write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {d / "data"}
  delete:
    enabled: true
http:
  addr: {addr}
"""
    )
    log = d / "registry.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([exe, "serve", str(config)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
    hosts._registry_proc = proc
    (d / "registry.pid").write_text(f"{proc.pid}\n")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}; {log}:\n"
                               f"{_tail(log)}")
        try:
            with opener.open(f"http://{addr}/v2/", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"docker-registry did not answer on {addr} within {timeout} s; "
                               f"{log}:\n{_tail(log)}")
        time.sleep(0.05)
    hosts.registry = addr
    return addr


def main_engine() -> docker.DockerClient:
    """A client on this machine's own Docker engine (/var/run/docker.sock)."""
    return docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)


def load_image(host: SimHost, ref: str, source: docker.DockerClient | None = None) -> str:
    """Copy image ``ref`` (e.g. "sample-app:v1") from ``source`` (default: the main
    engine) into ``host``'s engine with save/load; returns the image id."""
    src = source or main_engine()
    try:
        data = b"".join(src.images.get(ref).save(named=True))
    finally:
        if source is None:
            src.close()
    loaded = host.docker().images.load(data)
    return str(loaded[0].id)


def push_image(hosts: SimHosts, ref: str, via: SimHost | None = None) -> str:
    """Put image ``ref`` from the main engine into the registry (start_registry first):
    loaded into ``via`` (default h1), tagged ``<registry>/<ref>`` and pushed from there
    (the main engine does not trust the registry). Returns the registry reference."""
    if hosts.registry is None:
        raise RuntimeError("no registry: call start_registry(hosts) first")
    host = via or hosts.hosts[0]
    load_image(host, ref)
    repo, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
    target = f"{hosts.registry}/{repo}"
    client = host.docker()
    client.images.get(ref).tag(target, tag)
    for line in client.images.push(target, tag=tag, stream=True, decode=True):
        if "error" in line:
            raise RuntimeError(f"push of {target}:{tag} failed: {line['error']}")
    return f"{target}:{tag}"
