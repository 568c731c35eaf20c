"""Control of one HAProxy: verify, install, start, reload-and-confirm, runtime API.

The HAProxy runs on the host of a transport: this machine, or an LB host over SSH (config
uploaded by SFTP, checked there with its ``haproxy -c``, renamed into place there; the
sockets reached through the SSH connection).

Verify, then switch: a config is written to a temporary file beside the live one, checked
with ``haproxy -c``, and only then renamed over it (the previous one is kept as
``last-good``). A reload goes through the master CLI and is confirmed by ``show proc``:
the master's reload counter moved, no failure was counted, and none of the previous
workers is still the current one (HAProxy 2.6 reports nothing itself). A failed reload
restores the last good config and reloads it.

What HAProxy says about itself is read through ``process.HAProxyProcess`` (extended here).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path, PurePosixPath

from reconciler.errors import ObserveError, ReconcilerError
from reconciler.lb.haproxy.acmefiles import AcmeFiles
from reconciler.lb.haproxy.binds import (
    bind_key,
    bind_problems,
    config_binds,
    parse_addresses,
    parse_listeners,
)
from reconciler.lb.haproxy.certs import PemError, acme_files_dir, pem_facts, pem_payload
from reconciler.lb.haproxy.observe import observe_haproxy
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.lb.haproxy.privileges import RunAs, detect
from reconciler.lb.haproxy.process import HAProxyProcess
from reconciler.lb.haproxy.render import lb_check, render, server_args
from reconciler.lb.haproxy.requestlog import RING
from reconciler.lb.port import LBError, NoSuchServer, ServerEntry
from reconciler.model import DesiredState, LoadBalancer, ObservedLB, Service
from reconciler.transport.base import Transport, TransportError
from reconciler.transport.local import LocalTransport


class HAProxyError(LBError):
    """HAProxy refused a config, did not start, or did not reload."""


class HAProxyNoSuchServer(HAProxyError, NoSuchServer):
    """HAProxy answered that the server (or its backend) does not exist."""


class HAProxy(HAProxyProcess):
    """One HAProxy in master-worker mode, its files under ``paths``: the load-balancer
    port (``reconciler.lb.port.LoadBalancerPort``; each method's contract is there).
    What HAProxy says about itself is read through ``HAProxyProcess``."""

    def __init__(
        self,
        paths: HAProxyPaths,
        binary: str | None = None,
        timeout: float = 15.0,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(paths, transport or LocalTransport())
        local = isinstance(self.transport, LocalTransport)
        self.binary = binary or (shutil.which("haproxy") if local else None) or "haproxy"
        self.timeout = timeout
        self._run_as: tuple[RunAs | None] | None = None
        self._run_as_lock = threading.Lock()

    def run_as(self) -> RunAs | None:
        """The workers' user and chroot for the rendered config (see
        ``reconciler.lb.haproxy.privileges``); None for an HAProxy the reconciler does not
        start (``external``: its operator chooses) or when not root on its host. Found
        once per controller (a ``prepare`` under way is waited for); raises
        PrivilegeError when the host cannot provide them."""
        with self._run_as_lock:
            if self._run_as is None:
                root = PurePosixPath(str(self.paths.root))
                self._run_as = (detect(self.transport, root) if self.paths.managed else None,)
            return self._run_as[0]

    def prepare(self) -> None:
        """Find ``run_as`` in the background (one command on the host, 0.1-0.3 s over SSH);
        a failure is raised again by the ``config_text`` that needs it."""

        def find() -> None:
            with contextlib.suppress(ReconcilerError):
                self.run_as()

        threading.Thread(target=find, name=f"run-as-{self.host}", daemon=True).start()

    def observe(self) -> ObservedLB:
        obs = observe_haproxy(
            self.host, str(self.paths.stats_socket), str(self.paths.config), self.transport
        )
        return replace(obs, acme_dir=acme_files_dir(str(self.paths.root)))

    def request_events(self) -> str:
        """``show events`` of the request-log ring."""
        return self.stats.command(f"show events {RING}")

    # ------------------------------------------------------------------ config files

    def config_text(
        self, desired: DesiredState, lb: LoadBalancer, servers: Iterable[ServerEntry]
    ) -> str:
        """The rendered config; the workers' user and chroot found on the host."""
        return render(desired, lb, servers, self.paths, self.run_as())

    def discard(self, checked: Path) -> None:
        self.transport.unlink(str(checked))

    def check(self, text: str) -> Path:
        """Write ``text`` beside the live config and verify it; the checked file's path.

        Raises HAProxyError with HAProxy's own message when ``haproxy -c`` refuses it
        (the temporary file is removed: nothing is installed).
        """
        t = self.transport
        try:
            # A random name, created exclusively: nothing planted beside the config is
            # written through, and two reconcilers never share a temporary file.
            tmp = Path(t.write_temp(str(self.paths.config), text))
            proc = t.run([self.binary, "-c", "-f", str(tmp)], timeout=60)
        except TransportError as exc:
            raise HAProxyError(f"{self._on}cannot check the new config: {exc}") from None
        if proc.returncode != 0:
            t.unlink(str(tmp))
            detail = _alerts(proc.stderr + proc.stdout).replace(str(tmp), "<new config>")
            raise HAProxyError(
                f"{self._on}haproxy -c rejected the new config; nothing installed:\n{detail}"
            )
        return tmp

    def bind_problems(self, binds: Iterable[tuple[str, str, int]]) -> list[str]:
        """Why this host cannot give HAProxy the (frontend, address, port) ``binds`` that
        the installed config does not bind already ([] when it can): the address is not
        the host's, or another process listens on the port. Raises HAProxyError when the
        host cannot be asked (``ip`` and ``ss`` of iproute2 run there)."""
        current = config_binds(self.transport.read_text(str(self.paths.config)) or "")
        new = [(fe, a, p) for fe, a, p in binds if (bind_key(a), p) not in current]
        if not new:
            return []
        try:
            addrs = self.transport.run(["ip", "-o", "addr", "show"], timeout=10)
            socks = self.transport.run(["ss", "-Hltnp"], timeout=10)
        except TransportError as exc:
            raise HAProxyError(
                f"{self._on}cannot check the new config's bind addresses (iproute2's ip and "
                f"ss must be installed on the host): {exc}"
            ) from None
        if addrs.returncode or socks.returncode:
            raise HAProxyError(
                f"{self._on}cannot check the new config's bind addresses: "
                f"{(addrs.stderr or socks.stderr).strip()}"
            )
        own: set[int] = set()
        if self.running():
            procs = self.procs()
            own = {procs.master_pid, *procs.current_pids, *procs.old_pids}
        return bind_problems(new, parse_addresses(addrs.stdout), parse_listeners(socks.stdout), own)

    @property
    def _on(self) -> str:
        return "" if isinstance(self.transport, LocalTransport) else f"LB host {self.host}: "

    def install(self, text: str, checked: Path | None = None) -> bool:
        """Verify (unless ``checked``, a path ``check`` returned for this text) and
        atomically install ``text``; False when it was already installed."""
        t = self.transport
        current = str(self.paths.config)
        try:
            installed = t.read_text(current)
            if installed == text:
                if checked is not None:
                    t.unlink(str(checked))
                return False
            checked = checked or self.check(text)
            if installed is not None:
                t.copy(current, str(self.paths.last_good))
            t.replace(str(checked), current)
            # The state file matches the file just written, whoever reloads next (servers
            # added or repointed at runtime must not come back from an older one).
            self.save_server_state()
        except ObserveError:
            pass  # not running (it starts on the file alone) or not answering: a reload
            # of ours saves it first anyway
        except TransportError as exc:
            raise HAProxyError(f"{self._on}cannot install the new config: {exc}") from None
        return True

    # ------------------------------------------------------------------ process

    def start(self) -> None:
        """Start HAProxy (daemon, master-worker) on the installed config; wait for its sockets.

        Only an embedded HAProxy is started; an external one must be running already."""
        if not self.paths.managed:
            raise HAProxyError(
                f"HAProxy with master socket {self.paths.master_socket} is not "
                "running; start it in master-worker mode (-W -S <socket>): the "
                "reconciler starts only its embedded HAProxy"
            )
        pid = self._recorded_pid()
        if pid is not None and self._alive(pid):
            # Its sockets did not answer, yet it runs: a second HAProxy would bind the
            # same ports beside it (SO_REUSEPORT). Over SSH the usual cause is sshd
            # refusing Unix-socket forwarding.
            raise HAProxyError(
                f"{self._on}HAProxy (pid {pid}) is running but its master socket "
                f"{self.paths.master_socket} does not answer; not starting another one "
                "(over SSH: does sshd allow AllowStreamLocalForwarding?)"
            )
        # A dead HAProxy's sockets and state file (whose addresses would override the config's)
        for stale in (self.paths.master_socket, self.paths.stats_socket, self.paths.server_state):
            self.transport.unlink(str(stale))
        cmd = [
            self.binary,
            "-W",
            "-D",
            "-S",
            f"{self.paths.master_socket},mode,600",
            "-f",
            str(self.paths.config),
            "-p",
            str(self.paths.pid_file),
        ]
        proc = self.transport.run(cmd, timeout=60)
        if proc.returncode != 0:
            raise HAProxyError(
                f"{self._on}haproxy did not start: {_alerts(proc.stderr + proc.stdout)}"
            )
        self._wait(lambda: self._answers(self.stats), "the stats socket to answer")
        self._wait(lambda: self._answers(self.master), "the master socket to answer")

    def stop(self) -> None:
        """Stop HAProxy (used by tests and `reconcile` teardown); no-op when not running."""
        pid = self._recorded_pid()
        if pid is None or not self._alive(pid):
            return
        self.transport.run(["kill", "-TERM", str(pid)])
        self._wait(lambda: not self._alive(pid), f"HAProxy master {pid} to exit")

    def reload(self) -> None:
        """Reload and confirm it took; on failure restore the last good config and raise."""
        try:
            self._reload_confirmed()
        except HAProxyError as exc:
            if self.transport.read_text(str(self.paths.last_good)) is not None:
                self.transport.copy(str(self.paths.last_good), str(self.paths.config))
                try:
                    self._reload_confirmed()
                except HAProxyError as again:
                    raise HAProxyError(
                        f"{exc}; restoring the last good config failed too: {again}"
                    ) from exc
                raise HAProxyError(f"{exc}; the last good config was restored") from exc
            raise

    def _reload_confirmed(self) -> None:
        before = self.procs()
        self.save_server_state()
        self.master.command("reload")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                after = self.procs()
            except (ObserveError, ValueError):  # the master re-executes: briefly no answer
                after = before
            if after.reloads > before.reloads:
                break
            if time.monotonic() > deadline:
                raise HAProxyError(
                    f"{self._on}HAProxy did not report the reload within {self.timeout:.0f}s"
                )
            time.sleep(0.05)
        if (
            after.failed_reloads > 0
            or set(after.current_pids) & set(before.current_pids)
            or not after.current_pids
        ):
            raise HAProxyError(
                f"{self._on}HAProxy reload failed (failed reloads {after.failed_reloads}, "
                f"workers {list(before.current_pids)} -> "
                f"{list(after.current_pids)})"
            )
        self._wait(lambda: self._answers(self.stats), "the new worker's stats socket")

    # ------------------------------------------------------------------ runtime API

    def runtime(self, *commands: str) -> None:
        """Run runtime API commands (in one connection) that answer nothing on success;
        raise with HAProxy's answer otherwise."""
        answer = self.stats.commands(list(commands)).strip()
        if answer:
            error = HAProxyNoSuchServer if "No such" in answer else HAProxyError
            raise error(f"{self._on}HAProxy refused {'; '.join(commands)!r}: {answer}")

    def add_server(self, service: Service | None, entry: ServerEntry) -> None:
        """``add server`` with the config line's options (``render.server_args``) at
        weight 0, then ``enable health`` and ``enable server`` (HAProxy 2.6 creates a
        dynamic server in maintenance, its checks off)."""
        try:
            ip_address(entry.address)
        except ValueError:
            raise HAProxyError(f"refusing server address {entry.address!r}") from None
        if not 0 < entry.port < 65536:
            raise HAProxyError(f"refusing server port {entry.port!r}")
        name = f"{entry.backend}/{entry.name}"
        cmds = [
            f"add server {name} {server_args(entry.address, entry.port, 0, lb_check(service))}",
            f"enable health {name}",
            f"enable server {name}",
        ]
        answer = self.stats.commands(cmds).strip()
        if answer != "New server registered.":
            error = HAProxyNoSuchServer if "No such" in answer else HAProxyError
            raise error(f"{self._on}HAProxy refused {'; '.join(cmds)!r}: {answer}")

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        self.runtime(
            f"set weight {backend}/{server} {weight}", f"set server {backend}/{server} state ready"
        )

    def set_address(self, backend: str, server: str, address: str, port: int) -> None:
        """Point a server at ``address:port`` (runtime API, no reload); its checks then
        probe the new place. Raises HAProxyError with HAProxy's answer when refused."""
        cmd = f"set server {backend}/{server} addr {address} port {port}"
        answer = self.stats.command(cmd).strip()
        # HAProxy answers in words either way: "... changed from ..." or "no need to change".
        if not answer.endswith("by 'stats socket command'"):
            raise HAProxyError(f"{self._on}HAProxy refused {cmd!r}: {answer}")

    def acme(self) -> AcmeFiles:
        return AcmeFiles(self.transport, self.stats, acme_files_dir(str(self.paths.root)))

    def replace_certificate(self, path: str) -> str:
        """Load the PEM file at ``path`` (read on the LB host) into the running HAProxy
        through the runtime API: ``set ssl cert`` with its content, then ``commit ssl
        cert``; no reload. Every frontend that binds ``path`` serves it at once. Returns
        the serial now served. HAProxyError (naming the path and HAProxy's answer,
        quoting nothing of the file) when the file is unreadable, not a certificate and
        key, or refused; a refused transaction is aborted."""
        try:
            text = self.transport.read_text(path)
            if text is None:
                raise PemError("no such file")
            payload, facts = pem_payload(text), pem_facts(text)
        except (TransportError, PemError) as e:
            raise HAProxyError(f"{self._on}certificate file {path}: {e}") from None
        answer = self.stats.set_ssl_cert(path, payload).strip()
        if not answer.startswith("Transaction "):  # "... created" or "... updated"
            self.stats.command(f"abort ssl cert {path}")
            raise HAProxyError(f"{self._on}HAProxy refused the certificate {path}: {answer}")
        answer = self.stats.command(f"commit ssl cert {path}").strip()
        if not answer.endswith("Success!"):
            self.stats.command(f"abort ssl cert {path}")
            raise HAProxyError(f"{self._on}HAProxy did not commit the certificate {path}: {answer}")
        return facts.serial

    def delete_server(self, backend: str, server: str, timeout: float) -> None:
        """Put the server in maintenance and delete it; HAProxy refuses while it still has
        connections, so retry until ``timeout``. Raises HAProxyError if it never goes."""
        deadline = time.monotonic() + timeout
        first = [f"set server {backend}/{server} state maint"]
        while True:
            answer = self.stats.commands([*first, f"del server {backend}/{server}"]).strip()
            first = []
            if answer.startswith("Server deleted") or "No such" in answer:
                return
            if time.monotonic() > deadline:
                raise HAProxyError(f"HAProxy refused to delete {backend}/{server}: {answer}")
            time.sleep(0.05)

    def drain(self, backend: str, server: str) -> None:
        self.runtime(
            f"set weight {backend}/{server} 0", f"set server {backend}/{server} state drain"
        )

    # ------------------------------------------------------------------ helpers

    def _wait(self, cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not cond():
            if time.monotonic() > deadline:
                raise HAProxyError(f"timed out waiting for {what}")
            time.sleep(0.05)


def _alerts(output: str) -> str:
    """HAProxy's ALERT lines without their prefix (the NOTICE lines say nothing useful)."""
    alerts = [line.split(" : ", 1)[-1] for line in output.splitlines() if "[ALERT]" in line]
    return "\n".join(alerts) if alerts else output.strip()
