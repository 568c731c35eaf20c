"""ACME planning: which LB hosts need a certificate for an ACME frontend, and from where.

Pure. Per load balancer and ACME frontend, an LB host's certificate is *good* when its
file names exactly the frontend's domains and renewal is not due yet (two thirds of its
lifetime, ``certs.renewal_due``, at ``ObservedState.observed_at``). A good one that
HAProxy does not serve yet is served (``ReplaceCertificate``). Hosts without a good one
copy the good one of another LB host (an LB host added later); when no host has one, the
first such host issues one from the directory and the others then copy it. Steps run in
plan order, so a copy follows the issue it copies.
"""

from __future__ import annotations

from reconciler.lb.haproxy.certs import acme_cert_path, renewal_due
from reconciler.model import AcmeSpec, CertState, DesiredState, Frontend, ObservedState
from reconciler.plan.actions import ObtainCertificate, ReplaceCertificate
from reconciler.plan.phases import Phases


def plan_acme(ph: Phases, desired: DesiredState, observed: ObservedState) -> None:
    """Plan the certificates of every ACME frontend on every LB host (see the module)."""
    for lb in desired.loadbalancers:
        for fe in lb.frontends:
            if fe.tls_acme is not None:
                _plan_frontend(ph, fe, fe.tls_acme, lb.hosts, observed)


def _cert(observed: ObservedState, host: str, frontend: str) -> CertState | None:
    obs = observed.lb(host)
    return obs.certificate(acme_cert_path(obs.acme_dir, frontend)) if obs.acme_dir else None


def _why_not_good(cert: CertState | None, acme: AcmeSpec, now: float) -> str | None:
    """Why ``cert`` is not good for ``acme`` (None: it is)."""
    if cert is None or cert.file_fingerprint is None or cert.file_validity is None:
        return cert.problem if cert and cert.problem else "no certificate yet"
    if cert.file_names != tuple(sorted(acme.domains)):
        return f"the certificate names {', '.join(cert.file_names) or 'no domain'}"
    if renewal_due(cert.file_validity, now):
        return "two thirds of its lifetime have passed: renewal due"
    return None


def _plan_frontend(
    ph: Phases, fe: Frontend, acme: AcmeSpec, hosts: tuple[str, ...], observed: ObservedState
) -> None:
    now = observed.observed_at
    certs = {h: _cert(observed, h, fe.name) for h in sorted(hosts)}
    why = {h: _why_not_good(c, acme, now) for h, c in certs.items()}
    good = [h for h, w in why.items() if w is None]
    source = good[0] if good else ""
    for host, cert in certs.items():
        reason = why[host]
        if reason is None:
            assert cert is not None and cert.file_serial is not None
            if cert.loaded_fingerprint != cert.file_fingerprint:
                ph.certificates.append(
                    ReplaceCertificate(
                        host=host,
                        service=None,
                        path=cert.path,
                        old_serial=cert.loaded_serial or "",
                        serial=cert.file_serial,
                        digest=(cert.file_digest or "")[:16],
                        reason="HAProxy does not serve the certificate its file holds",
                    )
                )
            continue
        ph.certificates.append(
            ObtainCertificate(
                host=host,
                service=None,
                frontend=fe.name,
                directory=acme.directory,
                domains=acme.domains,
                email=acme.email,
                source=source,
                reason=reason,
            )
        )
        source = source or host  # the hosts after the issuing one copy its certificate
