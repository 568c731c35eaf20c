"""Settings of each HAProxy config section, and their digests.

The rendered config starts with one ``# reconciler-section <section> <digest>`` line per
section; comparing those with the digests of the desired state tells the planner which
frontends and backends changed without parsing HAProxy syntax. Servers are not part of
the digests: the planner compares them with the runtime state (``show servers state``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from reconciler.identity import backend_name, canonical_json, frontend_name, plain
from reconciler.model import DesiredState, LoadBalancer, Pairs

# Bump when the renderer's output changes, so installed configs are re-rendered.
RENDER_VERSION = 5  # 5: check options on each server line (as `add server` takes them)


def request_log(lb: LoadBalancer) -> bool:
    """Whether HAProxy logs every request into its ring (request records: per-revision
    and per-action counts and times, canary latency analysis)."""
    return lb.request_records


def section_settings(desired: DesiredState, lb: LoadBalancer) -> dict[str, dict[str, Any]]:
    """Section name ("global", "frontend fe_http", "backend be_web") -> its settings."""
    out: dict[str, dict[str, Any]] = {
        "global": {
            "render_version": RENDER_VERSION,
            "request_log": request_log(lb),
            "syslog": plain(lb.syslog) if lb.syslog else None,
        }
    }
    challenges = any(fe.tls_acme for fe in lb.frontends)
    for fe in lb.frontends:
        settings = plain(fe)
        if settings.pop("tls_acme") is not None:  # absent when unused: digests as before
            settings["tls_acme"] = plain(fe.tls_acme)
        if challenges and not (fe.tls_certificate or fe.tls_acme):
            settings["acme_challenges"] = True  # answers HTTP-01 (``render``)
        out[f"frontend {frontend_name(fe.name)}"] = settings
    for svc in desired.services:
        out[f"backend {backend_name(svc.name)}"] = {
            "balance": svc.balance,
            "timeouts": plain(svc.timeouts),
            # None for a service without releases (only ever built by hand): the digest
            # of what it always was
            "health": plain(svc.health) if svc.releases else None,
        }
    return out


def section_digests(desired: DesiredState, lb: LoadBalancer) -> Pairs:
    """Sorted (section, digest) pairs of the desired config of ``lb``."""
    return tuple(
        sorted(
            (name, hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16])
            for name, settings in section_settings(desired, lb).items()
        )
    )
