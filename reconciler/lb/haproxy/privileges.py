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
from reconciler.transport.base import Completed, Transport, TransportError

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


# What ``detect`` asks the host, in one command: each command over SSH costs a session
# and a login shell on the host (0.1-0.2 s), and this was four of them on every pass. A
# constant script; the chroot folder is its only argument ($1), never part of its text.
# Output, one item a line: uid; then, not root: the Docker socket's group ("" when
# unknown) and the user's groups; root: "<user> <group>" ("" when neither exists) and
# the folder's listing. Exit 3: no uid; 4: the folder could not be made.
_DETECT = " ".join([  # one line: no login shell chokes on a newline inside quotes
    'uid=$(id -u) || exit 3; echo "$uid";',
    f'if [ "$uid" != 0 ]; then stat -L -c %g {DOCKER_SOCKET} 2>/dev/null || echo;',
    "id -G; exit 0; fi;",
    f"g=; for u in {' '.join(CANDIDATES)}; do",
    'if g=$(id -gn "$u" 2>/dev/null); then echo "$u $g"; break; fi; g=; done;',
    '[ -n "$g" ] || { echo; exit 0; };',
    'install -d -m 0555 -o 0 -g 0 "$1" || exit 4; ls -A "$1"',
])


def detect(transport: Transport, root: PurePosixPath) -> RunAs | None:
    """How the workers of an HAProxy started by the reconciler on ``transport``'s host
    should run: None when the reconciler is not root there (HAProxy runs as its user).

    As root, prepare the chroot folder (created root-owned, mode 0555; refused when it is
    not empty) and pick the user (see the module). Raises PrivilegeError naming the host
    when no unprivileged user exists or the folder cannot be made empty and root-owned.
    One command on the host (``_DETECT``).
    """
    where = f"host {transport.name}"
    empty = str(chroot_dir(root))
    try:
        proc = transport.run(["sh", "-c", _DETECT, "sh", empty], timeout=30)
    except TransportError:
        proc = Completed((), 3, "", "")
    lines = [*proc.stdout.split("\n"), "", ""]
    uid = lines[0].strip()
    if proc.returncode == 3 or not uid.isdigit():
        # unknown is not "not root": never start workers as root blindly
        raise PrivilegeError(f"{where}: cannot tell which user the reconciler is (id -u)")
    if uid != "0":
        _refuse_docker_group(lines[1].strip(), lines[2].split(), where)
        return None
    user, _, group = lines[1].strip().partition(" ")
    if not group:
        raise PrivilegeError(
            f"{where}: neither user haproxy nor nobody exists; HAProxy's workers must not "
            "run as root: create a system user haproxy (Debian's haproxy package does)"
        )
    if proc.returncode == 4:
        raise PrivilegeError(f"{where}: cannot create {empty}: {proc.stderr.strip()}")
    listing = [x for x in lines[2:] if x.strip()]
    if proc.returncode != 0 or listing:
        raise PrivilegeError(
            f"{where}: HAProxy's chroot folder {empty} is not empty "
            f"({listing[:3] or proc.stderr.strip()}); empty it"
        )
    return RunAs(user=user, group=group, chroot=empty)


def _refuse_docker_group(socket_gid: str, groups: list[str], where: str) -> None:
    """Raise PrivilegeError when this (non-root) user holds the group that opens the
    Docker socket: HAProxy would inherit it (only root can shed groups), and a parser
    bug would then drive the engine, which is root on the host. The image documents
    running as root for this reason (the workers then run as haproxy, without groups)."""
    if socket_gid and socket_gid != "0" and socket_gid in groups:
        raise PrivilegeError(
            f"{where}: not starting HAProxy: the reconciler's user holds group {socket_gid}, "
            f"which opens {DOCKER_SOCKET}, and HAProxy would inherit it. Run the reconciler "
            "as root (HAProxy's workers then run as user haproxy without groups), or as a "
            "user without that group"
        )
