"""A host reached over SSH (paramiko): commands, SFTP, and streams to its sockets.

One SSH connection per host and pass, opened on first use and shared by every
operation (Docker API calls, SFTP, HAProxy's CLI sockets, health probes), each over
its own channel. Host keys are always verified (``ssh_keys``): ``strict`` refuses a
host that is not in the known_hosts file, ``accept-new`` records a new host's key there;
a *changed* key is refused either way, before anything is sent to the host. The Docker
SDK reaches the host's engine through ``ssh_docker``.

Unix sockets on the host (the Docker engine, HAProxy's sockets) are reached through
OpenSSH's ``direct-streamlocal@openssh.com`` channels and TCP ports through
``direct-tcpip``, so the host needs nothing but sshd (``AllowStreamLocalForwarding``
and ``AllowTcpForwarding``, both on by default): no docker CLI, no socat.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import stat
import threading
from typing import TYPE_CHECKING, Any

from reconciler.model import Host
from reconciler.transport.base import (
    Completed,
    HostKeyRefused,
    Stream,
    StreamUnavailable,
    TransportError,
)
from reconciler.transport.ssh_channels import open_streamlocal
from reconciler.transport.ssh_docker import docker_over
from reconciler.transport.ssh_keys import (
    KnownHostsPolicy,
    key_mismatch,
    load_known_hosts,
    private_key,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import docker
    import paramiko

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


class SshTransport:
    """One host over one SSH connection; thread-safe (each operation its own channel)."""

    def __init__(self, host: Host, timeout: float = 10.0) -> None:
        if host.ssh is None:
            raise ValueError(f"host {host.name} has no SSH connection")
        self.name = host.name
        self.host = host
        self.ssh = host.ssh
        self.timeout = timeout
        self.docker_socket = host.ssh.docker_socket or DEFAULT_DOCKER_SOCKET
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._docker: docker.DockerClient | None = None

    @property
    def where(self) -> str:
        return f"host {self.name} ({self.ssh.user}@{self.host.address}:{self.ssh.port})"

    # ------------------------------------------------------------------ connection

    def connect(self) -> paramiko.Transport:
        """The SSH transport, connecting (and verifying the host key) on first use.
        Raises HostKeyRefused (host key unknown under ``strict``, or changed) or
        TransportError (unreachable, authentication failed, unusable key file)."""
        with self._lock:
            if self._client is not None:
                t = self._client.get_transport()
                if t is not None and t.is_active():
                    return t
                # The connection broke (kept across passes, the host rebooted): what ran
                # over it goes with it, or it would be used on a dead channel.
                if self._sftp is not None:
                    self._sftp.close()
                    self._sftp = None
                if self._docker is not None:
                    self._docker.close()
                    self._docker = None
                self._client.close()
                self._client = None
            client = self._open_client()
            transport = client.get_transport()
            assert transport is not None
            transport.set_keepalive(15)
            # Every operation here is a small request awaiting a small answer: with
            # Nagle's algorithm on, a request sent while the previous packet is not yet
            # acknowledged waits for the peer's delayed ACK (40 ms on Linux).
            with contextlib.suppress(OSError, AttributeError):
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
            self._client = client
            return transport

    def _open_client(self) -> paramiko.SSHClient:
        """A new client connected to the host, its host key checked against known_hosts
        (``ssh_keys``); closed again when connecting fails."""
        import paramiko

        known = os.path.expanduser(self.ssh.known_hosts or "~/.ssh/known_hosts")
        client = paramiko.SSHClient()
        accept_new = self.ssh.host_key_checking == "accept-new"
        load_known_hosts(client, known, accept_new, self.where)
        client.set_missing_host_key_policy(KnownHostsPolicy(self.host, known, accept_new))  # type: ignore[arg-type]
        key = os.path.expanduser(self.ssh.key) if self.ssh.key else None
        pkey = private_key(key, self.where) if key else None
        try:
            client.connect(
                self.host.address,
                port=self.ssh.port,
                username=self.ssh.user,
                pkey=pkey,
                # An encrypted key is left to paramiko, which tries the agent next.
                key_filename=key if key and pkey is None else None,
                look_for_keys=key is None,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
            )
        except HostKeyRefused:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyRefused(
                key_mismatch(self.where, known, self.host.address, self.ssh.port, exc)
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TransportError(f"{self.where}: authentication failed: {exc}") from None
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise TransportError(f"{self.where}: cannot connect: {exc}") from None
        return client

    def close(self) -> None:
        with self._lock:
            if self._docker is not None:
                self._docker.close()
                self._docker = None
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
            if self._client is not None:
                self._client.close()
                self._client = None

    # ------------------------------------------------------------------ commands

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> Completed:
        """Run ``argv`` on the host. The remote side gets one command line made of the
        arguments each quoted with ``shlex.quote``: nothing in them is interpreted."""
        import paramiko

        command = shlex.join(argv)
        transport = self.connect()
        try:
            chan = transport.open_session(timeout=self.timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            out = _read_all(chan.makefile("rb"))
            err = _read_all(chan.makefile_stderr("rb"))
            code = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(f"{self.where}: cannot run {argv[0]}: {exc}") from None
        return Completed(tuple(argv), code, out, err)

    # ------------------------------------------------------------------ streams

    def open_unix(self, path: str, timeout: float) -> Stream:
        import paramiko

        transport = self.connect()
        try:
            chan = open_streamlocal(transport, path, timeout)
            chan.settimeout(timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:  # the session broke
            raise TransportError(f"{self.where}: {path}: {exc}") from None
        return chan

    def open_tcp(self, address: str, port: int, timeout: float) -> Stream:
        import paramiko

        try:
            chan = self.connect().open_channel(
                "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as exc:
            raise StreamUnavailable(f"{address}:{port} from {self.name}: {exc}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(f"{address}:{port} from {self.name}: {exc}") from None
        chan.settimeout(timeout)
        return chan

    # ------------------------------------------------------------------ files (SFTP)

    def _sftp_client(self) -> paramiko.SFTPClient:
        import paramiko

        transport = self.connect()
        with self._lock:
            if self._sftp is None:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    raise TransportError(f"{self.where}: cannot start SFTP: {exc}") from None
                if self._sftp is None:
                    raise TransportError(f"{self.where}: cannot start SFTP: no channel")
            return self._sftp

    def _files(self, what: str, path: str, op: Any) -> Any:
        """``op(sftp)``, one at a time; its OSError (SFTP's errors are IOErrors) or a
        broken session is raised as TransportError naming the host, what and path."""
        import paramiko

        sftp = self._sftp_client()
        try:
            with self._lock:  # one SFTP request at a time: the client is not thread-safe
                return op(sftp)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransportError(f"{self.where}: cannot {what} {path}: {exc}") from None

    def read_text(self, path: str) -> str | None:
        def op(sftp: paramiko.SFTPClient) -> str | None:
            try:
                with sftp.open(path, "r") as f:
                    return bytes(f.read()).decode("utf-8", errors="replace")
            except FileNotFoundError:
                return None

        result: str | None = self._files("read", path, op)
        return result

    def read_confined(self, root: str, relative: str) -> str | None:
        """Read ``root/relative`` when no component below ``root`` is a symbolic link
        (each checked with ``lstat``) and the file is a regular one. SFTP has no
        O_NOFOLLOW: a link swapped in between the check and the read by someone who
        can write the secrets folder on the host is not caught (that someone holds the
        secrets anyway)."""

        def op(sftp: paramiko.SFTPClient) -> str | None:
            cur = sftp.normalize(root)
            for part in relative.split("/"):
                cur = f"{cur.rstrip('/')}/{part}"
                try:
                    mode = sftp.lstat(cur).st_mode or 0
                except FileNotFoundError:
                    return None
                if stat.S_ISLNK(mode):
                    raise TransportError(
                        f"{self.where}: {root}/{relative}: a symbolic link is in the way "
                        f"below {root}; secrets are never read through links"
                    )
            if not stat.S_ISREG(mode):
                raise TransportError(f"{self.where}: {root}/{relative}: not a regular file")
            with sftp.open(cur, "r") as f:
                data = bytes(f.read())
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise TransportError(f"{self.where}: {root}/{relative}: not UTF-8 text") from None

        result: str | None = self._files("read", f"{root}/{relative}", op)
        return result

    def write_temp(self, beside: str, text: str, mode: int = 0o600) -> str:
        """A new file with a random name beside ``beside``: SFTP OPEN with CREATE|EXCL
        (a name that exists, a planted link included, is never opened) and the mode in
        the request, then set exactly (the server's umask aside) before writing."""
        return self._write_new(beside, text.encode(), mode)

    def _write_new(self, beside: str, data: bytes, mode: int) -> str:
        import secrets

        from paramiko.sftp import (
            CMD_HANDLE,
            CMD_OPEN,
            SFTP_FLAG_CREATE,
            SFTP_FLAG_EXCL,
            SFTP_FLAG_WRITE,
        )
        from paramiko.sftp_attr import SFTPAttributes
        from paramiko.sftp_file import SFTPFile

        folder = os.path.dirname(beside)
        path = f"{folder}/.{os.path.basename(beside)}.{secrets.token_hex(8)}.new"

        def op(sftp: paramiko.SFTPClient) -> None:
            _makedirs(sftp, folder)
            attrs = SFTPAttributes()
            attrs.st_mode = mode
            # paramiko's open() sends no attributes: the request it makes, with them.
            client: Any = sftp
            flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
            kind, msg = client._request(CMD_OPEN, path, flags, attrs)
            if kind != CMD_HANDLE:
                raise OSError(f"unexpected answer {kind} to OPEN")
            with SFTPFile(sftp, msg.get_binary(), "wb") as f:
                f.chmod(mode)
                f.write(data)

        self._files("write", path, op)
        return path

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        """Atomically replace ``path`` with ``text`` (``write_temp`` + ``replace``)."""
        tmp = self.write_temp(path, text, mode)
        try:
            self.replace(tmp, path)
        except TransportError:
            self.unlink(tmp)
            raise

    def replace(self, src: str, dst: str) -> None:
        self._files("rename", src, lambda sftp: sftp.posix_rename(src, dst))

    def copy(self, src: str, dst: str) -> None:
        """Over SFTP, no command on the host (each costs a session and a shell there):
        ``src``'s bytes and mode into a new file beside ``dst`` (``_write_new``), renamed
        over ``dst``, so ``dst`` is replaced atomically."""

        def read(sftp: paramiko.SFTPClient) -> tuple[bytes, int]:
            with sftp.open(src, "r") as f:
                return bytes(f.read()), (f.stat().st_mode or 0o600) & 0o7777

        data, mode = self._files("copy", src, read)
        tmp = self._write_new(dst, data, mode)
        try:
            self.replace(tmp, dst)
        except TransportError:
            self.unlink(tmp)
            raise

    def unlink(self, path: str) -> None:
        def op(sftp: paramiko.SFTPClient) -> None:
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(path)

        self._files("remove", path, op)

    # ------------------------------------------------------------------ Docker

    def docker(self) -> docker.DockerClient:
        with self._lock:
            if self._docker is not None:
                return self._docker
        client = docker_over(lambda: self.open_unix(self.docker_socket, self.timeout), self.where)
        with self._lock:
            self._docker = client
        return client


def _read_all(f: Any) -> str:
    return bytes(f.read()).decode("utf-8", errors="replace")


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    if not path or path == "/":
        return
    try:
        if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
            return
    except FileNotFoundError:
        pass
    _makedirs(sftp, os.path.dirname(path))
    sftp.mkdir(path, mode=0o700)
