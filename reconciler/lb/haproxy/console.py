"""One operator command to an HAProxy's CLI (``reconcile haproxy COMMAND...``).

The command arrives as an argument list (no shell ever sees it) and is sent as one line:
the words joined by single spaces, as HAProxy's CLI splits them again. It goes to the
master CLI when only the master knows it (``show proc``, ``reload``, ``show
startup-logs``, or ``@<process> ...`` to address one process through the master), to
the stats socket (the runtime API, level admin) otherwise; ``master`` forces either.
A line with a newline, carriage return, NUL or ``;`` is refused: one command, nothing
chained (``RuntimeSocket`` enforces the same).
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.errors import ReconcilerError
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.runtime import SocketUnavailable

# Commands of the 2.6 master CLI that the workers' stats socket does not have.
MASTER_ONLY = (("show", "proc"), ("reload",), ("show", "startup-logs"))


class NotRunning(ReconcilerError):
    """Nothing listens on the HAProxy socket the command is for."""


def command_line(words: Sequence[str]) -> str:
    """The words as one CLI line. ValueError when empty or when a word holds a newline,
    carriage return, NUL or ``;``."""
    line = " ".join(w.strip() for w in words if w.strip())
    if not line:
        raise ValueError("no command given (e.g. `show info`, `show stat`, `show proc`)")
    bad = sorted({c for c in line if c in "\n\r\0;"})
    if bad:
        raise ValueError(
            f"refusing {line!r}: one command at a time, without {', '.join(map(repr, bad))}"
        )
    return line


def for_master(words: Sequence[str]) -> bool:
    """True for a command only the master CLI answers."""
    lowered = tuple(w.lower() for w in words)
    return lowered[0].startswith("@") or any(lowered[: len(m)] == m for m in MASTER_ONLY)


def ask(haproxy: HAProxy, words: Sequence[str], master: bool | None = None) -> str:
    """HAProxy's answer to ``words`` (its own error answers included), from the master
    CLI when ``master`` (None: ``for_master``), else from the stats socket.

    Raises ValueError for a refused line (``command_line``), NotRunning when nothing
    listens on the socket, ObserveError when it answers late or the connection fails."""
    line = command_line(words)
    use_master = for_master(line.split()) if master is None else master
    sock = haproxy.master if use_master else haproxy.stats
    try:
        if line == "reload":
            # the runtime state (servers added, weights, drains) survives this reload too
            haproxy.save_server_state()
        return sock.command(line)
    except SocketUnavailable as exc:
        which = "master socket" if use_master else "stats socket"
        where = "" if haproxy.host == "local" else f" on {haproxy.host}"
        reason = str(exc).rsplit(": ", 1)[-1]  # the OS's words, after the path
        raise NotRunning(
            f"HAProxy is not running: nothing answers on its {which} {sock.path}{where} "
            f"({reason}); a pass (`reconcile apply`) starts the embedded HAProxy of an "
            "environment"
        ) from None
