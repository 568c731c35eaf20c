"""The load-balancer port: what a pass needs of the load balancer on one LB host.

The executor (reconciler.apply), the session (the canaries' request log) and the
observer type against ``LoadBalancerPort``; ``reconciler.lb.haproxy.control.HAProxy``
is its one implementation, ``tests/fakes.py`` an in-memory one. Servers are named by
(backend, server), as the planner names them (``reconciler.identity``).

Every method raises ``LBError`` (a ReconcilerError) with a message for the operator
when the load balancer refuses or cannot be reached, unless its contract says
otherwise. Methods may be called from several threads at once for different servers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.errors import ReconcilerError
from reconciler.model import DesiredState, LoadBalancer, ObservedLB, Service


class LBError(ReconcilerError):
    """The load balancer refused a config or a command, did not start, or did not reload."""


class NoSuchServer(LBError):
    """The load balancer has no server of that name (a command addressed it anyway)."""


@dataclass(frozen=True)
class ServerEntry:
    """One server as a config states it: where it is and its weight."""

    backend: str
    name: str
    address: str
    port: int
    weight: int


class AcmeHost(Protocol):
    """An LB host's ACME files and HTTP-01 answers (``lb.haproxy.acmefiles.AcmeFiles``).
    Every method raises LBError naming the file or command, never quoting a file."""

    def cert_path(self, frontend: str) -> str: ...
    def read(self, name: str) -> str | None: ...
    def write(self, name: str, text: str) -> None: ...
    def prepare(self, frontends: list[str]) -> None: ...
    def set_challenge(self, token: str, key_authorization: str) -> None: ...
    def clear_challenge(self, token: str) -> None: ...


class LoadBalancerPort(Protocol):
    """The load balancer of one LB host (its config file, its process, its runtime API)."""

    # ---------------------------------------------------------------- observe

    def observe(self) -> ObservedLB:
        """A snapshot of the installed config and, when it runs, of its servers and
        counters (``running`` False when nothing answers). Raises ObserveError when it
        answers late or wrongly."""
        ...

    def request_events(self) -> str:
        """The text of the request log the canaries read (see
        ``reconciler.lb.haproxy.requestlog``). Raises ReconcilerError when not running."""
        ...

    # ---------------------------------------------------------------- config

    def prepare(self) -> None:
        """A config step will follow: start finding, in the background, what
        ``config_text`` needs from the host (it waits for it then), so that the step
        does not wait for the host's answer. Raises nothing; what fails surfaces from
        ``config_text``."""
        ...

    def config_text(
        self, desired: DesiredState, lb: LoadBalancer, servers: Iterable[ServerEntry]
    ) -> str:
        """The whole config this load balancer would run for ``desired`` with exactly
        ``servers``: same input, same text. Changes nothing; raises ReconcilerError
        when the host cannot provide what the config needs (e.g. the workers' user)."""
        ...

    def bind_problems(self, binds: Iterable[tuple[str, str, int]]) -> list[str]:
        """Why the host cannot give the load balancer each (frontend, address, port) of
        ``binds`` that the installed config does not bind already; [] when it can.
        Raises LBError when the host cannot be asked."""
        ...

    def check(self, text: str) -> Path:
        """Verify ``text`` on its host without installing it; a handle of the checked
        copy for ``install`` or ``discard``. Raises LBError (nothing left behind) when
        the load balancer rejects it."""
        ...

    def discard(self, checked: Path) -> None:
        """Forget a checked copy that will not be installed (idempotent)."""
        ...

    def install(self, text: str, checked: Path | None = None) -> bool:
        """Atomically make ``text`` the installed config, checking it first unless
        ``checked`` (from ``check`` for this text); the previous one is kept as the last
        good config. False (nothing written) when ``text`` is installed already. Raises
        LBError, installing nothing, when the text is rejected. Does not reload."""
        ...

    # ---------------------------------------------------------------- process

    def running(self) -> bool:
        """True when the load balancer's process answers."""
        ...

    def start(self) -> None:
        """Start it on the installed config and wait until it answers; LBError when it
        does not start (or is not one the reconciler may start)."""
        ...

    def reload(self) -> None:
        """Run the installed config and confirm that the new process took over. On
        failure restore the last good config, run that, and raise LBError saying so."""
        ...

    # ---------------------------------------------------------------- runtime (no reload)

    def add_server(self, service: Service | None, entry: ServerEntry) -> None:
        """Add ``entry`` at runtime (no reload) with the checks ``service`` gives its
        servers in the config, at weight 0 whatever ``entry.weight`` says, its checks
        enabled: it gets no request until ``set_weight`` (after ``wait_up``). LBError
        when refused (e.g. the name exists already)."""
        ...

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Give the server ``weight`` and make it ready (out of drain)."""
        ...

    def set_address(self, backend: str, server: str, address: str, port: int) -> None:
        """Point the server at ``address:port``; its checks then probe the new place."""
        ...

    def acme(self) -> AcmeHost:
        """The ACME files and challenge answers of this LB host."""
        ...

    def replace_certificate(self, path: str) -> str:
        """Serve the current content of the certificate file at ``path`` (on the LB
        host) without a reload; the serial now served. Never quotes the file."""
        ...

    def drain(self, backend: str, server: str) -> None:
        """Weight 0 and drain: no new sessions, current ones finish. NoSuchServer when
        the load balancer does not have it."""
        ...

    def wait_drained(self, backend: str, server: str, timeout: float) -> bool:
        """True when the server has no current session (or is gone) within ``timeout``
        seconds; False when sessions are still open then."""
        ...

    def delete_server(self, backend: str, server: str, timeout: float) -> None:
        """Take the server out (maintenance, then delete; retried while it still has
        connections, until ``timeout``). A server already gone is no error. LBError when
        it is still there at the deadline: only a reload of a config without it helps."""
        ...

    def wait_up(self, servers: Iterable[tuple[str, str]], timeout: float) -> list[str]:
        """Wait until each (backend, server) is UP; the ones that are not by ``timeout``
        seconds, as sorted "backend/server" strings ([]: all UP)."""
        ...

    def old_worker_sessions(self, servers: Iterable[tuple[str, str]]) -> int:
        """Current sessions on ``servers`` in processes of earlier configs that a reload
        left finishing their requests (the current process's sessions not counted)."""
        ...
