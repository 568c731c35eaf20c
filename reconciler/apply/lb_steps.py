"""The load-balancer steps of a run: servers added, pointed, weighed, drained and
removed, and the config step that writes (and checks, installs, reloads or starts) what
they add up to.

Runtime changes go through the load balancer's runtime API at once; every change is also
made to ``next_servers``, the server table the next config step renders, so that a later
reload keeps it. A config that the load balancer rejects installs nothing (the loop then
stops the run); a reload that does not take restores the last good config (the port's
contract). A server added at runtime enters at weight 0 and gets its weight once
HAProxy's own check says UP; one that does not come UP is deleted and fails its service.
A server added for a reload that is not UP after it is drained and fails its service;
its container is left running.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import partial

from reconciler import identity
from reconciler.apply.checked import CheckedConfigs
from reconciler.apply.results import Ledger, Status, StepSkipped
from reconciler.errors import ReconcilerError
from reconciler.lb.port import LBError, LoadBalancerPort, NoSuchServer, ServerEntry
from reconciler.model import DesiredState, LoadBalancer, ObservedState
from reconciler.plan.actions import (
    Action,
    AddServer,
    ConfigureLB,
    DrainServer,
    RemoveContainer,
    RemoveServer,
    ReplaceCertificate,
    RepointServer,
    SetWeight,
)

# Steps that change what an LB host's next config says (their statuses are counted per
# LB host, so that a config step after only skipped ones says it was skipped too).
LB_CHANGES = (AddServer, RepointServer, SetWeight, DrainServer, RemoveServer)

Servers = dict[tuple[str, str], ServerEntry]  # (backend, server) -> its entry


class LBSteps:
    """Runs the load-balancer steps of one run on ``lbs`` (LB host -> its port).
    ``gated_address`` says where a server's container answers once it is healthy."""

    def __init__(
        self,
        desired: DesiredState,
        observed: ObservedState,
        lbs: Mapping[str, LoadBalancerPort],
        ledger: Ledger,
        gated_address: Callable[[AddServer | RepointServer], tuple[str, int]],
        health_min_s: float,
    ) -> None:
        self.desired = desired
        self.lbs = lbs
        self.ledger = ledger
        self.gated_address = gated_address
        self.health_min_s = health_min_s
        self.drain_s = {s.name: s.drain_timeout_s for s in desired.services}
        self.health = {s.name: s.health for s in desired.services if s.releases}
        self.services = {s.name: s for s in desired.services}
        # LB host -> the servers its next config states, from live state + this run's steps
        self.next_servers: dict[str, Servers] = {
            lb.host: {
                (s.backend, s.server): ServerEntry(s.backend, s.server, s.address, s.port, s.weight)
                for s in lb.servers
            }
            for lb in observed.lbs
        }
        self.added: dict[str, list[tuple[str, str]]] = {}  # LB host -> servers to see UP
        self.needs_reload: set[str] = set()  # LB hosts where a runtime change was refused
        self.undrained: set[tuple[str, str, str]] = set()  # (LB host, backend, server)
        # service -> (LB host, backend, server)s this run added at runtime
        self.runtime_added: dict[str, list[tuple[str, str, str]]] = {}
        # server -> its (LB host, backend, server)s to delete once its container stopped
        self.deferred: dict[str, list[tuple[str, str, str]]] = {}
        self.checked = CheckedConfigs(lbs)  # configs checked before their step (``verify``)
        # What the run's plan adds at runtime and removes, per LB host (``check_ahead``)
        self.adds: dict[str, list[AddServer]] = {}
        self.removals: dict[str, set[tuple[str, str]]] = {}
        self.statuses: dict[str, Counter[Status]] = {}  # LB host -> its steps' since config

    def expect(self, actions: Iterable[Action]) -> None:
        """Note the servers the run's ``actions`` add at runtime and remove on each LB
        host, so that the configs after them can be checked ahead (``check_ahead``)."""
        for a in actions:
            if isinstance(a, AddServer) and a.runtime:
                self.adds.setdefault(a.host, []).append(a)
            elif isinstance(a, RemoveServer):
                self.removals.setdefault(a.host, set()).add((a.backend, a.server))

    def count(self, action: Action, status: Status) -> None:
        """Note the status of a step; those that change a next config are counted."""
        if isinstance(action, LB_CHANGES):
            with self.ledger.lock:
                self.statuses.setdefault(action.host, Counter())[status] += 1

    def forget_containers(self, containers: list[tuple[str, str]]) -> None:
        """Take the servers of removed (host, container)s out of every next config."""
        names = {identity.server_name(host, name) for host, name in containers}
        for table in self.next_servers.values():
            for key in [k for k in table if k[1] in names]:
                del table[key]

    # ------------------------------------------------------------------ server steps

    def add_server(self, a: AddServer) -> str | None:
        """A server of the next config; with ``a.runtime``, also added to HAProxy now:
        at weight 0 until HAProxy's own check says UP, then at its weight. One that does
        not come UP is deleted again and fails its service."""
        address, port = self.gated_address(a)
        entry = ServerEntry(a.backend, a.server, address, port, a.weight)
        if not a.runtime:
            with self.ledger.lock:
                self.next_servers.setdefault(a.host, {})[(a.backend, a.server)] = entry
                self.added.setdefault(a.host, []).append((a.backend, a.server))
            return None
        lb = self.lbs[a.host]
        lb.add_server(self.services.get(a.service or ""), entry)
        timeout = self._up_timeout([a.backend])
        if lb.wait_up([(a.backend, a.server)], timeout=timeout):
            lb.delete_server(a.backend, a.server, timeout=5)
            raise LBError(
                f"server {a.backend}/{a.server} did not come UP in HAProxy at "
                f"{address}:{port} within {timeout:.0f}s; deleted again (it got no request)"
            )
        with self.ledger.lock:
            failed = (a.service or "") in self.ledger.result.failures
            if not failed:  # else ``withdraw`` ran already: this one is not on its list
                self.runtime_added.setdefault(a.service or "", []).append(
                    (a.host, a.backend, a.server)
                )
        if failed:
            lb.delete_server(a.backend, a.server, timeout=5)  # still at weight 0
            raise StepSkipped(f"{a.service} failed meanwhile; deleted again (it got no request)")
        lb.set_weight(a.backend, a.server, a.weight)
        with self.ledger.lock:
            self.next_servers.setdefault(a.host, {})[(a.backend, a.server)] = entry
        return f"added at runtime, UP, weight {a.weight}; no reload"

    def withdraw(self, service: str) -> None:
        """``service`` failed and its new containers go: delete the servers this run added
        for it at runtime first (one HAProxy refuses to delete goes with the reload of
        the next config step instead)."""
        with self.ledger.lock:
            keys = self.runtime_added.pop(service, [])
        for lb_host, backend, server in keys:
            try:
                self.lbs[lb_host].delete_server(backend, server, timeout=5)
            except LBError:
                with self.ledger.lock:
                    self.needs_reload.add(lb_host)

    def repoint(self, a: RepointServer) -> str:
        """Point the server at its container; done when the LB reports it UP there."""
        address, port = self.gated_address(a)
        lb = self.lbs[a.host]
        lb.set_address(a.backend, a.server, address, port)
        with self.ledger.lock:
            table = self.next_servers.setdefault(a.host, {})
            old = table.get((a.backend, a.server))
            weight = old.weight if old else 0
            table[(a.backend, a.server)] = ServerEntry(a.backend, a.server, address, port, weight)
        timeout = self._up_timeout([a.backend])
        if lb.wait_up([(a.backend, a.server)], timeout=timeout):
            raise LBError(
                f"server {a.backend}/{a.server} did not come UP at {address}:{port} "
                f"within {timeout:.0f}s"
            )
        return f"now at {address}:{port}, UP"

    def set_weight(self, a: SetWeight) -> None:
        self.lbs[a.host].set_weight(a.backend, a.server, a.weight)
        self._set_next_weight(a.host, a.backend, a.server, a.weight)

    def _set_next_weight(self, lb_host: str, backend: str, server: str, weight: int) -> None:
        with self.ledger.lock:
            table = self.next_servers.setdefault(lb_host, {})
            old = table.get((backend, server))
            if old is not None:
                table[(backend, server)] = ServerEntry(
                    old.backend, old.name, old.address, old.port, weight
                )

    def drain(self, a: DrainServer) -> str | None:
        lb = self.lbs[a.host]
        try:
            lb.drain(a.backend, a.server)
        except NoSuchServer:
            return "not in HAProxy any more"
        self._set_next_weight(a.host, a.backend, a.server, 0)
        if not lb.wait_drained(a.backend, a.server, a.timeout_s):
            with self.ledger.lock:
                self.undrained.add((a.host, a.backend, a.server))
            return f"sessions still open after {a.timeout_s}s; removed anyway"
        return None

    def remove_server(self, a: RemoveServer) -> str | None:
        """Delete the server at runtime. One whose drain timed out (long-lived
        connections: SSE, WebSockets) is tried once; HAProxy refuses while they last, so
        it stays in maintenance (no new requests) and is deleted once its container is
        stopped (``delete_deferred``): its app ends those connections itself on SIGTERM,
        cleanly, and no reload cuts them. Any other refusal: HAProxy is reloaded on a
        config without it instead."""
        key = (a.host, a.backend, a.server)
        with self.ledger.lock:
            self.next_servers.get(a.host, {}).pop((a.backend, a.server), None)
            undrained = key in self.undrained
        lb = self.lbs[a.host]
        timeout = 0.0 if undrained else self.drain_s.get(a.service or "", 30)
        try:
            lb.delete_server(a.backend, a.server, timeout=timeout)
        except LBError as exc:
            with self.ledger.lock:
                if undrained:
                    self.deferred.setdefault(a.server, []).append(key)
                    return "long-lived sessions still open: deleted once its container stops"
                self.needs_reload.add(a.host)  # the config without it is loaded instead
            return f"{exc}; HAProxy will be reloaded instead"
        return None

    def replace_certificate(self, a: ReplaceCertificate) -> str:
        """Serve the file's current content without a reload (on this step's LB host);
        the outcome check compares what is served with the file again."""
        serial = self.lbs[a.host].replace_certificate(a.path)
        changed = "" if serial == a.serial else f" (the plan saw serial {a.serial})"
        return f"now serving serial {serial}, no reload{changed}"

    def delete_deferred(self, a: RemoveContainer) -> str | None:
        """After the container of ``a`` stopped: delete its servers that still had
        sessions (``remove_server``); one HAProxy still refuses is dropped by a reload
        of the installed config (which no longer has it)."""
        with self.ledger.lock:
            keys = self.deferred.pop(identity.server_name(a.host, a.name), [])
        notes = []
        for lb_host, backend, server in keys:
            lb = self.lbs[lb_host]
            try:
                lb.delete_server(backend, server, timeout=self.drain_s.get(a.service or "", 30))
            except LBError as exc:
                lb.reload()
                with self.ledger.lock:
                    self.ledger.result.reloads += 1
                notes.append(f"{exc}; reloaded HAProxy on {lb_host} instead")
        return "; ".join(notes) or None

    def wait_old_sessions(self, a: RemoveContainer) -> str | None:
        """Before a container is stopped: an LB process of an earlier config (left by a
        reload) may still be finishing requests on it; the drain saw only the current
        process. Wait for those sessions, at most the service's drain timeout."""
        if a.service is None:
            return None
        key = (identity.backend_name(a.service), identity.server_name(a.host, a.name))
        timeout = self.drain_s.get(a.service, 30)
        deadline = time.monotonic() + timeout
        for lb in self.lbs.values():
            if not lb.running():
                continue
            while lb.old_worker_sessions([key]):
                if time.monotonic() > deadline:
                    return (
                        f"an HAProxy process of an earlier config still had sessions on it "
                        f"after {timeout}s; stopped anyway"
                    )
                time.sleep(0.05)
        return None

    # ------------------------------------------------------------------ config step

    def _lbdef(self, lb_host: str) -> LoadBalancer:
        return next(x for x in self.desired.loadbalancers if lb_host in x.hosts)

    def _render(self, lb_host: str) -> str:
        servers = self.next_servers.get(lb_host, {}).values()
        return self.lbs[lb_host].config_text(self.desired, self._lbdef(lb_host), servers)

    def _ready(self, lb_host: str) -> None:
        """Before a config of ``lb_host`` is checked: raise, installing nothing, when the
        host cannot give HAProxy a bind the config adds (``haproxy -c`` does not check; a
        reload that fails to bind refuses new connections on every frontend for
        seconds); make the files its ACME frontends load (challenge map, placeholder
        certificates)."""
        binds = [(fe.name, fe.bind_address, fe.bind_port) for fe in self._lbdef(lb_host).frontends]
        problems = self.lbs[lb_host].bind_problems(binds)
        if problems:
            on = "" if self.desired.host(lb_host).ssh is None else f"LB host {lb_host}: "
            raise LBError(
                f"{on}the new config binds what this host cannot give HAProxy; nothing "
                "installed: " + "; ".join(problems)
            )
        acme = [fe.name for fe in self._lbdef(lb_host).frontends if fe.tls_acme]
        if acme:
            self.lbs[lb_host].acme().prepare(acme)

    def verify(self, lb_host: str) -> None:
        """Render and check the next config of ``lb_host`` now, for its config step to
        install (raises, installing nothing, when it cannot be)."""
        text = self._render(lb_host)  # PrivilegeError: the host lacks a user
        self._ready(lb_host)
        self.checked.check(lb_host, text)

    def check_ahead(self, published: Mapping[tuple[str, str], tuple[str, int]]) -> None:
        """Check in the background, during the new containers' health gate, the configs
        each LB host's next config steps most likely install: with the servers the plan
        adds at runtime (at ``published``: (app host, container) -> address, port), then
        without those it removes; those steps then run no ``haproxy -c`` of their own."""
        adds, self.adds = self.adds, {}
        for lb_host, todo in adds.items():
            where = [published.get((a.app_host, a.container)) for a in todo]
            entries = {
                (a.backend, a.server): ServerEntry(a.backend, a.server, *w, a.weight)
                for a, w in zip(todo, where, strict=True)
                if w is not None
            }
            if len(entries) < len(todo):
                continue  # a container the plan adds is not running: no guess
            with self.ledger.lock:
                servers = {**self.next_servers.get(lb_host, {}), **entries}
            gone = self.removals.get(lb_host, set())
            after = {k: v for k, v in servers.items() if k not in gone}
            lb, lbdef = self.lbs[lb_host], self._lbdef(lb_host)
            try:
                texts = [lb.config_text(self.desired, lbdef, t.values()) for t in (servers, after)]
            except ReconcilerError:
                continue  # the config step renders it again and says why
            for text in texts:
                self.checked.check_later(lb_host, text, partial(self._ready, lb_host))

    def configure(self, a: ConfigureLB) -> str:
        lb = self.lbs[a.host]
        changed = self._install(a.host)
        steps = self.statuses.pop(a.host, Counter())
        if not lb.running():
            lb.start()
            what = "started HAProxy"
        elif a.host in self.needs_reload or (a.reload and changed):
            lb.reload()
            self.needs_reload.discard(a.host)
            with self.ledger.lock:
                self.ledger.result.reloads += 1
            what = "reloaded HAProxy (confirmed)"
        elif not changed and steps["skipped"] and not steps["ok"]:
            failed = ", ".join(self.ledger.failed_services())
            raise StepSkipped(
                f"nothing to write: the steps it follows were skipped ({failed or 'see above'} "
                "failed); HAProxy keeps its config, no reload"
            )
        elif a.reload:
            what = "config unchanged; no reload needed"
        else:
            what = "config written" if changed else "config unchanged"
        added = self.added.pop(a.host, [])
        if added and a.reload:
            not_up = self._fail_not_up(lb, added)
            if not_up:
                return f"{what}; not UP: {', '.join(not_up)}"
        return what

    def _install(self, lb_host: str) -> bool:
        """Install the next config (one verified with the other LB hosts' is not checked
        twice); raises, installing nothing, when it is refused. False: unchanged."""
        lb = self.lbs[lb_host]
        text = self._render(lb_host)
        path = self.checked.take(lb_host, text)
        if path is None:
            self._ready(lb_host)
        return lb.install(text, path)

    def _up_timeout(self, backends: Iterable[str]) -> float:
        """How long servers of ``backends`` may take to be UP after a completed check:
        ``health_min_s`` (--health-timeout), but at least one check interval and check
        timeout of their service, since the LB's first check of a server it has just
        loaded may come up to one interval later."""
        longest = 0.0
        for backend in backends:
            h = self.health.get(identity.parse_backend_name(backend))
            if h is not None:
                longest = max(longest, (h.interval_ms + h.timeout_ms) / 1000)
        return max(self.health_min_s, longest)

    def _fail_not_up(self, lb: LoadBalancerPort, added: list[tuple[str, str]]) -> list[str]:
        """Wait for the servers ``added`` to come UP after the reload; each that does not
        is drained and fails its service. Those not UP."""
        not_up = lb.wait_up(added, timeout=self._up_timeout(b for b, _ in added))
        for backend, server in added:
            if f"{backend}/{server}" in not_up:
                service = identity.parse_backend_name(backend)
                self.ledger.fail(service, f"server {backend}/{server} did not come UP in HAProxy")
                lb.drain(backend, server)
        return not_up
