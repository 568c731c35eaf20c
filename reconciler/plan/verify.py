"""Verify the outcome of a pass: does the world serve what the desired state promises?

Pure: compares a ``DesiredState`` with an ``ObservedState`` read after the pass and
returns every difference as a ``Mismatch``. It shares no code with the planner on
purpose: a planner bug that plans the wrong step must not also hide the wrong outcome.

What it checks (invariant 6 of the design):

- HAProxy runs on every LB host;
- every server HAProxy has, in any state, in its runtime and in its config file, points
  at the address and port that a running managed container of the environment publishes
  under that server's name (a server left on a dead port is found even while DOWN);
- the config file and the runtime name the same servers;
- every desired replica of every release (services in ``skip`` and app hosts in
  ``frozen`` excepted: a pass leaves them as they run) runs, and its server is in HAProxy
  at the release's weight, ready (not drained or in maintenance) and UP; a server that is
  not UP is reported with its health check status;
- no other server of a checked service is left in HAProxy;
- HAProxy serves, from the path of each TLS frontend's certificate, the certificate its
  file on that LB host holds now (same leaf fingerprint): a renewed file is served.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from reconciler import identity
from reconciler.lb.haproxy.certs import acme_cert_path
from reconciler.model import DesiredState, Frontend, ObservedLB, ObservedState


@dataclass(frozen=True)
class Mismatch:
    """One difference between the promised and the observed world."""

    host: str  # the LB host (or app host) where it was seen
    subject: str  # e.g. "be_web/local.staging-web-v1-0123456789-0"
    problem: str

    def __str__(self) -> str:
        return f"{self.host}: {self.subject}: {self.problem}"


def verify(
    desired: DesiredState,
    observed: ObservedState,
    skip: Collection[str] = (),
    frozen: Collection[str] = (),
) -> tuple[Mismatch, ...]:
    """Every difference between ``observed`` and what ``desired`` promises (none: the
    outcome holds). ``skip``: services left as they run (held or failed in this pass);
    ``frozen``: app hosts this pass did not roll."""
    env = desired.environment
    published: dict[str, tuple[str, int] | None] = {}  # server name -> where it answers
    for host in observed.hosts:
        for c in host.containers:
            if c.label(identity.ENVIRONMENT) == env and c.status == "running":
                published[identity.server_name(host.name, c.name)] = c.published
    expected = _expected(desired, observed, set(skip), set(frozen))
    checked = {identity.backend_name(s.name) for s in desired.services if s.name not in skip}
    out: list[Mismatch] = []
    for lb in desired.loadbalancers:
        for lb_host in lb.hosts:
            obs = observed.lb(lb_host)
            if not obs.running:
                out.append(Mismatch(lb_host, "haproxy", "HAProxy is not running"))
                continue
            out += _pointers(obs, published)
            out += _certificates(obs, [_cert_path(fe, obs.acme_dir) for fe in lb.frontends])
            out += _promised(obs, expected, checked, set(frozen))
    return tuple(out)


def _expected(
    desired: DesiredState, observed: ObservedState, skip: set[str], frozen: set[str]
) -> dict[tuple[str, str], tuple[str, int]]:
    """(backend, server) -> (app host, weight) of every server the pass promised."""
    env = desired.environment
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for svc in desired.services:
        if svc.name in skip:
            continue
        for host in svc.hosts:
            if host in frozen:
                continue
            images = dict(observed.host(host).images)
            for rel in svc.releases:
                image_id = images.get(rel.spec.image, "")
                chash = identity.config_hash(
                    env, svc.name, rel.revision, rel.spec, image_id, desired.instance.label_key
                )
                for replica in range(svc.replicas):
                    name = identity.container_name(
                        env, svc.name, rel.revision, chash, replica, desired.instance.name
                    )
                    key = (identity.backend_name(svc.name), identity.server_name(host, name))
                    out[key] = (host, rel.weight)
    return out


def _pointers(
    obs: ObservedLB, published: dict[str, tuple[str, int] | None]
) -> list[Mismatch]:
    """Servers (runtime and file, any state) must point where their container answers."""
    out: list[Mismatch] = []
    runtime = {(s.backend, s.server): (s.address, s.port) for s in obs.servers}
    in_file = {(b, s): (a, p) for b, s, a, p, _ in obs.config_servers}
    for where, servers in (("", runtime), ("config file: ", in_file)):
        for (backend, server), (address, port) in sorted(servers.items()):
            subject = f"{backend}/{server}"
            if server not in published:
                out.append(
                    Mismatch(
                        obs.host,
                        subject,
                        f"{where}points at {address}:{port}, "
                        "where no running managed container answers",
                    )
                )
            elif published[server] != (address, port):
                want = published[server]
                shown = f"{want[0]}:{want[1]}" if want else "no port"
                out.append(
                    Mismatch(
                        obs.host,
                        subject,
                        f"{where}points at {address}:{port} but its container publishes {shown}",
                    )
                )
    for key in sorted(runtime.keys() - in_file.keys()):
        out.append(Mismatch(obs.host, "/".join(key), "in HAProxy but not in its config file"))
    for key in sorted(in_file.keys() - runtime.keys()):
        out.append(Mismatch(obs.host, "/".join(key), "in the config file but not in HAProxy"))
    return out


def _promised(
    obs: ObservedLB,
    expected: dict[tuple[str, str], tuple[str, int]],
    checked: set[str],
    frozen: set[str],
) -> list[Mismatch]:
    """Desired servers present, ready, UP, at their weight; no other server left."""
    out: list[Mismatch] = []
    states = {(s.backend, s.server): s for s in obs.servers}
    stats = {(s.backend, s.server): s for s in obs.stats}
    for key, (app_host, weight) in sorted(expected.items()):
        subject = "/".join(key)
        state = states.get(key)
        if state is None:
            out.append(Mismatch(obs.host, subject, f"missing (its container on {app_host})"))
            continue
        if state.weight != weight:
            out.append(Mismatch(obs.host, subject, f"weight {state.weight}, want {weight}"))
        if state.admin:
            out.append(Mismatch(obs.host, subject, f"state {','.join(state.admin)}, want ready"))
        stat = stats.get(key)
        if stat is not None and not stat.status.startswith("UP"):
            check = f", health check {stat.check_status}" if stat.check_status else ""
            out.append(Mismatch(obs.host, subject, f"{stat.status}{check}; want UP"))
    for key in sorted(states):
        backend, server = key
        frozen_host = identity.server_host(server) in frozen
        if backend in checked and key not in expected and not frozen_host:
            out.append(Mismatch(obs.host, "/".join(key), "left in HAProxy, not desired"))
    return out


def _cert_path(fe: Frontend, acme_dir: str) -> str | None:
    if fe.tls_acme is not None:
        return acme_cert_path(acme_dir, fe.name) if acme_dir else None
    return fe.tls_certificate


def _certificates(obs: ObservedLB, paths: list[str | None]) -> list[Mismatch]:
    """HAProxy serves, from each certificate path, what the file there holds."""
    out: list[Mismatch] = []
    for path in sorted({p for p in paths if p}):
        cert = obs.certificate(path)
        if cert is None or cert.loaded_fingerprint is None:
            out.append(Mismatch(obs.host, path, "HAProxy serves no certificate from this path"))
        elif cert.problem is not None or cert.file_fingerprint is None:
            out.append(Mismatch(obs.host, path, cert.problem or "certificate file unreadable"))
        elif cert.file_fingerprint != cert.loaded_fingerprint:
            out.append(
                Mismatch(
                    obs.host,
                    path,
                    f"HAProxy serves serial {cert.loaded_serial}; the file holds serial "
                    f"{cert.file_serial}",
                )
            )
    return out
