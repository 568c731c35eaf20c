"""Which user an embedded HAProxy's workers run as, and the empty folder they are
chrooted to.

HAProxy's workers parse everything a client sends; a parser bug must not be root on the
host. When the reconciler starts HAProxy as root (on this machine or on an LB host),
the rendered ``global`` section tells HAProxy to chroot its workers to an empty,
root-owned folder and to drop to a user of their own:

- Debian's haproxy package creates a system user and group ``haproxy``: used when it
  exists;
- otherwise ``nobody`` and its primary group (shared with other daemons, but never
  root and without supplementary groups: HAProxy calls ``setgroups``);
- neither: refused (HAProxyError), rather than running the workers as root.

The master stays root: it binds the listeners (ports below 1024 too) and the Unix
sockets (owned by root, mode 600, so only root reaches them), reads the config, the
server-state file and TLS certificates at start and at every reload before it forks,
and re-executes itself on a reload through the master CLI. The workers receive the
bound sockets and need no file at all after the chroot.

Not root (a reconciler run by an ordinary user, or the image's default user): HAProxy
cannot change user, and runs as the reconciler's user; nothing is added. Such a user
must not hold the group of the Docker socket (HAProxy would inherit it): refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from reconciler.errors import ReconcilerError
from reconciler.transport.base import Transport, TransportError

CANDIDATES = ("haproxy", "nobody")
DOCKER_SOCKET = "/var/run/docker.sock"


class PrivilegeError(ReconcilerError):
    """The workers' user or chroot folder cannot be set up on an LB host."""


@dataclass(frozen=True)
class RunAs:
    """The workers' identity: ``user``/``group`` names and the chroot folder."""

    user: str
    group: str
    chroot: str

    def global_lines(self) -> list[str]:
        """The lines of HAProxy's ``global`` section that drop the workers' privileges."""
        return [f"    user {self.user}", f"    group {self.group}", f"    chroot {self.chroot}"]


def chroot_dir(root: PurePosixPath) -> PurePosixPath:
    """The workers' chroot: an empty folder beside the embedded HAProxy's files."""
    return root / "empty"


def detect(transport: Transport, root: PurePosixPath) -> RunAs | None:
    """How the workers of an HAProxy started by the reconciler on ``transport``'s host
    should run: None when the reconciler is not root there (HAProxy runs as its user).

    As root, prepare the chroot folder (created root-owned, mode 0555; refused when it is
    not empty) and pick the user (see the module). Raises PrivilegeError naming the host
    when no unprivileged user exists or the folder cannot be made empty and root-owned.
    """
    where = f"host {transport.name}"
    uid = _out(transport, ["id", "-u"])
    if not uid.isdigit():  # unknown is not "not root": never start workers as root blindly
        raise PrivilegeError(f"{where}: cannot tell which user the reconciler is (id -u)")
    if uid != "0":
        _refuse_docker_group(transport, where)
        return None
    for user in CANDIDATES:
        group = _out(transport, ["id", "-gn", user])
        if group:
            break
    else:
        raise PrivilegeError(
            f"{where}: neither user haproxy nor nobody exists; HAProxy's workers must not "
            "run as root: create a system user haproxy (Debian's haproxy package does)"
        )
    empty = str(chroot_dir(root))
    made = transport.run(["install", "-d", "-m", "0555", "-o", "0", "-g", "0", empty])
    if made.returncode != 0:
        raise PrivilegeError(f"{where}: cannot create {empty}: {made.stderr.strip()}")
    listing = transport.run(["ls", "-A", empty])
    if listing.returncode != 0 or listing.stdout.strip():
        raise PrivilegeError(
            f"{where}: HAProxy's chroot folder {empty} is not empty "
            f"({listing.stdout.split()[:3] or listing.stderr.strip()}); empty it"
        )
    return RunAs(user=user, group=group, chroot=empty)


def _refuse_docker_group(transport: Transport, where: str) -> None:
    """Raise PrivilegeError when this (non-root) user holds the group that opens the
    Docker socket: HAProxy would inherit it (only root can shed groups), and a parser
    bug would then drive the engine, which is root on the host. The image documents
    running as root for this reason (the workers then run as haproxy, without groups)."""
    socket_gid = _out(transport, ["stat", "-L", "-c", "%g", DOCKER_SOCKET])
    groups = _out(transport, ["id", "-G"]).split()
    if socket_gid and socket_gid != "0" and socket_gid in groups:
        raise PrivilegeError(
            f"{where}: not starting HAProxy: the reconciler's user holds group {socket_gid}, "
            f"which opens {DOCKER_SOCKET}, and HAProxy would inherit it. Run the reconciler "
            "as root (HAProxy's workers then run as user haproxy without groups), or as a "
            "user without that group"
        )


def _out(transport: Transport, argv: list[str]) -> str:
    """The command's first output line; "" when it fails (e.g. no such user)."""
    try:
        proc = transport.run(argv, timeout=30)
    except TransportError:
        return ""
    lines = proc.stdout.split("\n")
    return lines[0].strip() if proc.returncode == 0 else ""
