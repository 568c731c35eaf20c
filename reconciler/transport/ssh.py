"""A host reached over SSH (paramiko): commands, SFTP, and streams to its sockets.

One SSH connection per host and pass, opened on first use and shared by every
operation (Docker API calls, SFTP, HAProxy's CLI sockets, health probes), each over
its own channel. Host keys are always verified: ``strict`` refuses a host that is not
in the known_hosts file, ``accept-new`` records a new host's key there; a *changed*
key is refused either way, before anything is sent to the host.

Unix sockets on the host (the Docker engine, HAProxy's sockets) are reached through
OpenSSH's ``direct-streamlocal@openssh.com`` channels and TCP ports through
``direct-tcpip``, so the host needs nothing but sshd (``AllowStreamLocalForwarding``
and ``AllowTcpForwarding``, both on by default): no docker CLI, no socat.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shlex
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

from reconciler.model import Host
from reconciler.transport.base import (
    Completed,
    HostKeyRefused,
    Stream,
    StreamUnavailable,
    TransportError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import docker
    import paramiko

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


class _QuietChannelRefusals(logging.Filter):
    """paramiko logs every refused channel open at ERROR; a refused socket is an
    ordinary answer here (e.g. HAProxy not running yet) and is raised as such."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_QuietChannelRefusals())


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a host key, e.g. ``ssh-ed25519 SHA256:abc...``."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def open_streamlocal(transport: paramiko.Transport, path: str, timeout: float) -> paramiko.Channel:
    """Open a ``direct-streamlocal@openssh.com`` channel to the Unix socket ``path``.

    paramiko's ``open_channel`` only knows the TCP channel kinds; this is the same
    request with the payload RFC-style OpenSSH defines for Unix sockets (string path,
    string reserved, uint32 reserved). Raises StreamUnavailable when the server cannot
    connect to the socket (missing, refused, or forwarding disabled).
    """
    import paramiko
    from paramiko.common import cMSG_CHANNEL_OPEN

    # paramiko's private channel bookkeeping, as open_channel itself uses it (checked
    # against paramiko 3.4-5.x; the integration tests exercise it on every run).
    t: Any = transport
    if not t.is_active():
        raise TransportError("SSH session not active")
    with t.lock:
        window = t._sanitize_window_size(None)
        packet = t._sanitize_packet_size(None)
        chanid = t._next_channel()
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string("direct-streamlocal@openssh.com")
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(packet)
        m.add_string(path)
        m.add_string("")
        m.add_int(0)
        chan: Any = paramiko.Channel(chanid)
        t._channels.put(chanid, chan)
        event = threading.Event()
        t.channel_events[chanid] = event
        t.channels_seen[chanid] = True
        chan._set_transport(t)
        chan._set_window(window, packet)
    t._send_user_message(m)
    deadline = time.monotonic() + timeout
    while not event.wait(0.05):
        if not t.is_active():
            raise TransportError("SSH connection closed while opening a channel")
        if time.monotonic() > deadline:
            raise TransportError(f"{path}: no answer to the channel request within {timeout}s")
    opened: paramiko.Channel | None = t._channels.get(chanid)
    if opened is None:
        raise StreamUnavailable(f"{path}: the host could not connect to the socket")
    return opened


class _Policy:
    """Missing-host-key policy: refuse (strict) or record the key (accept-new)."""

    def __init__(self, host: Host, known_hosts: str, accept_new: bool) -> None:
        self.host = host
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        if not self.accept_new:
            raise HostKeyRefused(
                f"host {self.host.name} ({hostname}): its host key {fingerprint(key)} is not "
                f"in {self.known_hosts}; refusing to connect (host_key_checking: strict). "
                "Add the key after checking it out of band (e.g. ssh-keyscan on the host "
                "itself), or allow accept-new for this host (with its address) in the "
                "operator's policy and set host_key_checking: accept-new"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        client.save_host_keys(self.known_hosts)


def _load_known_hosts(
    client: paramiko.SSHClient, known: str, accept_new: bool, where: str
) -> None:
    """Load ``known`` into ``client`` (creating it empty for ``accept-new``).

    Raises HostKeyRefused, naming the file and what is wrong with it but quoting
    nothing from it: paramiko's own errors quote the offending line, and the path may
    name any file (``/etc/passwd``)."""
    try:
        if accept_new and not os.path.exists(known):
            os.makedirs(os.path.dirname(known) or ".", mode=0o700, exist_ok=True)
            with open(known, "a"):
                pass
        client.load_host_keys(known)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
    except Exception:
        # paramiko's parser fails in many ways (ValueError, UnicodeDecodeError,
        # InvalidHostKey, ...), each quoting file content.
        why = "not a known_hosts file (each line: host names, key type, base64 key)"
    else:
        return
    raise HostKeyRefused(
        f"{where}: cannot use known_hosts {known!r}: {why}; "
        "refusing to connect without a host key to check"
    )


def _private_key(path: str, where: str) -> paramiko.PKey | None:
    """The private key in ``path``; None when it is encrypted (paramiko then tries the
    SSH agent). Raises TransportError naming the file, quoting nothing from it."""
    import paramiko

    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        return None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
    except Exception:
        # cryptography and paramiko raise ValueError, SSHException, UnicodeDecodeError...;
        # their messages may quote the file.
        why = "not a private key file paramiko can read (OpenSSH or PEM format)"
    raise TransportError(f"{where}: cannot use the SSH key {path!r}: {why}")


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

    @property
    def _known_name(self) -> str:
        """The host's name in known_hosts (OpenSSH writes ``[address]:port`` off port 22)."""
        a = self.host.address
        return a if self.ssh.port == 22 else f"[{a}]:{self.ssh.port}"

    # ------------------------------------------------------------------ connection

    def connect(self) -> paramiko.Transport:
        """The SSH transport, connecting (and verifying the host key) on first use."""
        import paramiko

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
            known = os.path.expanduser(self.ssh.known_hosts or "~/.ssh/known_hosts")
            client = paramiko.SSHClient()
            accept_new = self.ssh.host_key_checking == "accept-new"
            _load_known_hosts(client, known, accept_new, self.where)
            client.set_missing_host_key_policy(_Policy(self.host, known, accept_new))  # type: ignore[arg-type]
            key = os.path.expanduser(self.ssh.key) if self.ssh.key else None
            pkey = _private_key(key, self.where) if key else None
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
                    f"{self.where}: HOST KEY MISMATCH: {known} has {fingerprint(exc.expected_key)}"
                    f" but the host offered {fingerprint(exc.key)}; refusing to connect "
                    "(someone may be intercepting the connection). If the host's key was "
                    "changed on purpose, check the new fingerprint on the host itself, then "
                    f"remove the old line (ssh-keygen -R {shlex.quote(self._known_name)} -f "
                    f"{shlex.quote(known)}) and add the new key (ssh-keyscan -p {self.ssh.port} "
                    f"{shlex.quote(self.host.address)}, its fingerprint checked)"
                ) from None
            except paramiko.AuthenticationException as exc:
                client.close()
                raise TransportError(f"{self.where}: authentication failed: {exc}") from None
            except (paramiko.SSHException, OSError) as exc:
                client.close()
                raise TransportError(f"{self.where}: cannot connect: {exc}") from None
            transport = client.get_transport()
            assert transport is not None
            transport.set_keepalive(15)
            self._client = client
            return transport

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
                f.write(text.encode())

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
        done = self.run(["cp", "-p", "--", src, dst])
        if done.returncode != 0:
            raise TransportError(f"{self.where}: cannot copy {src}: {done.stderr.strip()}")

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


def docker_over(opener: Any, where: str, timeout: int = 60) -> docker.DockerClient:
    """A Docker client whose every HTTP connection is a stream from ``opener()``.

    Built on the SDK's Unix-socket adapter (same pooling and request handling); only
    how a connection is opened differs. The API version is negotiated once, like
    ``version="auto"`` does."""
    from reconciler.transport.dockerapi import import_docker_sdk

    import_docker_sdk()
    import docker
    import docker.errors
    from docker.transport.unixconn import (
        UnixHTTPAdapter,
        UnixHTTPConnection,
        UnixHTTPConnectionPool,
    )

    class Connection(UnixHTTPConnection):  # type: ignore[misc]
        def connect(self) -> None:
            sock = opener()
            sock.settimeout(self.timeout)
            self.sock = sock

    class Pool(UnixHTTPConnectionPool):  # type: ignore[misc]
        def _new_conn(self) -> Connection:
            return Connection(self.base_url, self.socket_path, self.timeout)

    class Adapter(UnixHTTPAdapter):  # type: ignore[misc]
        def get_connection(self, url: Any, proxies: Any = None) -> Pool:
            with self.pools.lock:
                pool = self.pools.get(url)
                if pool:
                    return pool  # type: ignore[no-any-return]
                pool = Pool(url, self.socket_path, self.timeout, maxsize=self.max_pool_size)
                self.pools[url] = pool
            return pool

    # The base URL is a placeholder: no request goes to it, the adapter replaces it.
    client = docker.DockerClient(base_url="unix:///nonexistent", version="1.24", timeout=timeout)
    client.api.mount("http+docker://", Adapter("http+unix:///nonexistent", timeout))
    try:
        server = client.api.version(api_version=False)["ApiVersion"]
    except HostKeyRefused:
        client.close()
        raise  # says it all already: no Docker fault to suggest
    except (docker.errors.DockerException, OSError, TransportError) as exc:
        client.close()
        raise TransportError(f"{where}: cannot reach the Docker engine: {exc}") from None
    from docker.constants import DEFAULT_DOCKER_API_VERSION
    from docker.utils import version_lt

    client.api._version = (
        server if version_lt(server, DEFAULT_DOCKER_API_VERSION) else DEFAULT_DOCKER_API_VERSION
    )
    return client
