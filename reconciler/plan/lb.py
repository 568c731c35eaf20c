"""LB planning: the HAProxy actions that make each LB host serve ``Phases.servers``.

Pure, like the rest of the planner, and the one place that decides whether an LB host
reloads. Runs after container planning (``plan.containers``), whose wanted servers and
retirement reasons it reads. Per LB host: reload only when the config's structure
changed (a frontend, route, backend or TLS binding appeared, disappeared or changed:
the section digests) or HAProxy does not run; add missing servers through the runtime
API when their backend runs already (else they come with that reload), repoint and
reweight servers through it, drain and remove servers no container backs any more, and
write all of that into the config file (no reload). Held backends and servers of frozen
app hosts are left exactly as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler import identity
from reconciler.lb.haproxy.sections import section_digests
from reconciler.model import DesiredState, LoadBalancer, ObservedLB, ServerState
from reconciler.plan.actions import (
    AddServer,
    ConfigureLB,
    DrainServer,
    RemoveServer,
    ReplaceCertificate,
    RepointServer,
    SetWeight,
)
from reconciler.plan.phases import Phases, WantedServer

_Key = tuple[str, str]  # (backend, HAProxy server name)


def plan_lb(
    ph: Phases,
    desired: DesiredState,
    lb: LoadBalancer,
    obs: ObservedLB,
    held: set[str],
    frozen: set[str],
) -> None:
    """Plan one LB host of ``lb`` from what it runs (``obs``). ``held``: backend names
    left as they are; ``frozen``: app hosts whose servers are left as they are."""
    lb_host = obs.host
    structure = _structure_changes(desired, lb, obs)
    live = {
        (s.backend, s.server): s
        for s in obs.servers
        if s.backend not in held and not _frozen_server(s.server, frozen)
    }
    wanted = {(s.backend, s.name): s for s in ph.servers}
    running = _running_backends(obs)
    for key in sorted(wanted):
        _plan_server(ph, lb_host, wanted[key], live.get(key), running)
    adds = [a for a in ph.lb_adds if isinstance(a, AddServer) and a.host == lb_host]
    if with_config := [a for a in adds if not a.runtime]:
        # Only a new backend or a stopped HAProxy: either is a structure change already.
        structure.append(f"{len(with_config)} server(s) added with it")
    if structure:
        ph.lb_configs.append(
            ConfigureLB(
                host=lb_host,
                service=None,
                reload=True,
                reasons=tuple(structure),
                reason="structure changed",
            )
        )
    runtime_changes = [a for a in (*ph.repoints, *ph.weights) if a.host == lb_host]
    runtime_adds = [a for a in adds if a.runtime]
    if runtime_changes or runtime_adds:
        reasons = [f"{len(runtime_adds)} server(s) added at runtime"] if runtime_adds else []
        if runtime_changes:
            reasons.append("keep the new addresses and weights across reloads")
        ph.weights.append(
            ConfigureLB(
                host=lb_host,
                service=None,
                reload=False,
                reasons=tuple(reasons),
                reason="servers changed at runtime",
            )
        )
    if not structure:  # a reload reads every certificate file anyway
        _plan_certificates(ph, lb, obs)
    removed = [key for key in sorted(live) if key not in wanted]
    if obs.running and not (structure or removed or runtime_changes or runtime_adds):
        _check_file(ph, obs, wanted.values(), held, frozen)
    drain_timeout = {identity.backend_name(s.name): s.drain_timeout_s for s in desired.services}
    _remove_servers(ph, lb_host, removed, drain_timeout)


def _structure_changes(desired: DesiredState, lb: LoadBalancer, obs: ObservedLB) -> list[str]:
    """Why the LB host needs a reload for its config's structure (empty: it does not)."""
    if not obs.running:
        return ["HAProxy is not running"]
    return _section_changes(dict(obs.config_sections), dict(section_digests(desired, lb)))


def _section_changes(have: dict[str, str], want: dict[str, str]) -> list[str]:
    if not have:
        return ["no managed config installed"]
    out: list[str] = []
    for name in sorted(set(have) | set(want)):
        if name not in have:
            out.append(f"{name} added")
        elif name not in want:
            out.append(f"{name} removed")
        elif have[name] != want[name]:
            out.append(f"{name} changed")
    return out


def _running_backends(obs: ObservedLB) -> set[str]:
    """Backends the running HAProxy has (from its config's header): a server can be added
    to them at runtime. None when it does not run."""
    if not obs.running:
        return set()
    return {name.split(" ", 1)[1] for name, _ in obs.config_sections if name.startswith("backend ")}


def _frozen_server(server: str, frozen: set[str]) -> bool:
    # Server names are "<app host>.<container>"; host names have no dots.
    return identity.server_host(server) in frozen


def _plan_server(
    ph: Phases, lb_host: str, srv: WantedServer, have: ServerState | None, running: set[str]
) -> None:
    """Add ``srv`` when HAProxy lacks it (``have`` is None): at runtime when its backend
    is in ``running``; otherwise repoint it when its container is new or publishes
    elsewhere, and set its weight when that differs or an admin state (maint, drain)
    holds it."""
    if have is None:
        ph.lb_adds.append(
            AddServer(
                host=lb_host,
                service=srv.service,
                backend=srv.backend,
                server=srv.name,
                app_host=srv.app_host,
                container=srv.container,
                weight=srv.weight,
                runtime=srv.backend in running,
                reason=srv.reason,
            )
        )
        return
    if srv.port is None or (have.address, have.port) != (srv.address, srv.port):
        ph.repoints.append(
            RepointServer(
                host=lb_host,
                service=srv.service,
                backend=srv.backend,
                server=srv.name,
                app_host=srv.app_host,
                container=srv.container,
                reason=(
                    f"its container is new; HAProxy has it at {have.address}:{have.port}"
                    if srv.port is None
                    else f"its container publishes {srv.address}:{srv.port}, "
                    f"not {have.address}:{have.port}"
                ),
            )
        )
    if have.weight != srv.weight or have.admin:
        state = f" (state {','.join(have.admin)})" if have.admin else ""
        ph.weights.append(
            SetWeight(
                host=lb_host,
                service=srv.service,
                backend=srv.backend,
                server=srv.name,
                old_weight=have.weight,
                weight=srv.weight,
                reason=f"weight of its release is {srv.weight}{state}",
            )
        )


def _plan_certificates(ph: Phases, lb: LoadBalancer, obs: ObservedLB) -> None:
    """Replace at runtime each TLS certificate whose file (read on the LB host) holds
    another leaf certificate than HAProxy serves from that path: noticed by content,
    not by path. A file that cannot be read is left to the outcome check."""
    for path in sorted({fe.tls_certificate for fe in lb.frontends if fe.tls_certificate}):
        cert = obs.certificate(path)
        if cert is None or cert.file_fingerprint is None or cert.file_serial is None:
            continue
        if cert.file_fingerprint == cert.loaded_fingerprint:
            continue
        old = cert.loaded_serial or ""
        ph.certificates.append(
            ReplaceCertificate(
                host=obs.host,
                service=None,
                path=path,
                old_serial=old,
                serial=cert.file_serial,
                digest=(cert.file_digest or "")[:16],
                reason=(
                    f"the file holds certificate serial {cert.file_serial}; HAProxy serves "
                    + (f"serial {old}" if old else "nothing")
                    + " from that path"
                ),
            )
        )


def _check_file(
    ph: Phases,
    obs: ObservedLB,
    wanted: Iterable[WantedServer],
    held: set[str],
    frozen: set[str],
) -> None:
    """The runtime is right; is the file (read at the next reload) right too? A pass
    killed between a runtime change and the file write leaves it behind: write it."""
    expected = tuple(
        sorted(
            (s.backend, s.name, s.address, s.port, s.weight) for s in wanted if s.port is not None
        )
    )
    in_file = tuple(
        x for x in obs.config_servers if x[0] not in held and not _frozen_server(x[1], frozen)
    )
    if in_file != expected:
        ph.weights.append(
            ConfigureLB(
                host=obs.host,
                service=None,
                reload=False,
                reasons=("the config file's servers differ from HAProxy's",),
                reason="config file out of date",
            )
        )


def _remove_servers(
    ph: Phases, lb_host: str, removed: list[_Key], drain_timeout: dict[str, int]
) -> None:
    """Drain, then remove through the runtime API, each server in ``removed``; the file is
    written to match, with no reload."""
    for backend, server in removed:
        service = identity.parse_backend_name(backend)
        why = ph.retiring.get(server, "no such container")
        ph.drains.append(
            DrainServer(
                host=lb_host,
                service=service,
                backend=backend,
                server=server,
                timeout_s=drain_timeout.get(backend, 30),
                reason=why,
            )
        )
        ph.lb_removals.append(
            RemoveServer(host=lb_host, service=service, backend=backend, server=server, reason=why)
        )
    if removed:
        ph.lb_removals.append(
            ConfigureLB(
                host=lb_host,
                service=None,
                reload=False,
                reasons=(f"{len(removed)} server(s) removed",),
                reason="servers removed",
            )
        )
