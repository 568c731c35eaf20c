"""SSH host keys and client keys: the known_hosts policy (``strict`` refuses a host
that is not in the file, ``accept-new`` records a new host's key; a *changed* key is
refused either way) and loading the operator's private key.

Every error names the host and the file, and quotes nothing from the file (the path may
name any file, ``/etc/passwd``): ``HostKeyRefused`` for host keys, ``TransportError`` for
the private key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
from typing import TYPE_CHECKING, Any

from reconciler.model import Host
from reconciler.transport.base import HostKeyRefused, TransportError

if TYPE_CHECKING:
    import paramiko


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a host key, e.g. ``ssh-ed25519 SHA256:abc...``."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


class KnownHostsPolicy:
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


def load_known_hosts(client: paramiko.SSHClient, known: str, accept_new: bool, where: str) -> None:
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


def private_key(path: str, where: str) -> paramiko.PKey | None:
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


def key_mismatch(where: str, known: str, address: str, port: int, exc: Any) -> str:
    """The message for a host whose key differs from the one in ``known`` (``exc``: the
    paramiko ``BadHostKeyException``), with how to replace the key once checked."""
    # The host's name in known_hosts (OpenSSH writes ``[address]:port`` off port 22).
    known_name = address if port == 22 else f"[{address}]:{port}"
    return (
        f"{where}: HOST KEY MISMATCH: {known} has {fingerprint(exc.expected_key)}"
        f" but the host offered {fingerprint(exc.key)}; refusing to connect "
        "(someone may be intercepting the connection). If the host's key was "
        "changed on purpose, check the new fingerprint on the host itself, then "
        f"remove the old line (ssh-keygen -R {shlex.quote(known_name)} -f "
        f"{shlex.quote(known)}) and add the new key (ssh-keyscan -p {port} "
        f"{shlex.quote(address)}, its fingerprint checked)"
    )
