"""The mode of each environment from the Inventory's ``environments`` (ssh or etcd):
semantic checks after the schema, and the typed ``Coordination`` of one environment.

The schema has checked shapes and patterns; here: each environment is declared by one
Inventory only, names an environment that exists, ``etcd`` settings are given exactly
when the mode is etcd, endpoints have a port and an address that can be, and file
paths are clean (``safety.local_file``). Pure: documents in, problems out.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from reconciler.coordination import DEFAULT_LEASE_TTL_S, Coordination, EtcdSettings
from reconciler.desired import safety
from reconciler.desired.loader import At, Document
from reconciler.errors import Problem

if TYPE_CHECKING:
    from reconciler.desired.manifests import Manifests


def index_modes(doc: Document, table: dict[str, At], problems: list[Problem]) -> None:
    """Add the environments an Inventory document declares to ``table`` (name -> where),
    reporting one declared by two documents."""
    for name in doc.data.get("environments", {}):
        at = At(doc, ("environments", name))
        if name in table:
            first = table[name]
            line, _ = first.doc.where(first.path, key=True)
            problems.append(doc.problem(at.path, f"environment {name!r} already has its mode in "
                                                 f"{first.doc.file}:{line}", key=True))
        else:
            table[name] = at


def check_modes(m: Manifests) -> list[Problem]:
    """Every declared mode: a known environment, settings that fit the mode."""
    problems: list[Problem] = []
    known = m.environment_names()
    for name, at in m.modes.items():
        if name not in known and ("Environment", name) not in m.broken:
            problems.append(at.problem(
                f"unknown environment {name!r} (known: {', '.join(known)})", key=True))
        data = at.doc.get(at.path)
        etcd = data.get("etcd")
        if data["mode"] == "etcd" and etcd is None:
            problems.append(at.problem("mode etcd needs etcd: {endpoints, ca, cert, key}",
                                       "mode"))
        elif data["mode"] != "etcd" and etcd is not None:
            problems.append(at.problem(f"etcd settings are only for mode etcd (mode is "
                                       f"{data['mode']!r})", "etcd", key=True))
        if etcd is not None:
            problems += _check_etcd(at, etcd)
    return problems


def _check_etcd(at: At, etcd: dict[str, object]) -> list[Problem]:
    problems: list[Problem] = []
    endpoints = etcd["endpoints"]
    assert isinstance(endpoints, list)
    for i, ep in enumerate(endpoints):
        parts = urlsplit(ep)
        if not 1 <= int(parts.netloc.rsplit(":", 1)[1]) <= 65535:
            problems.append(at.problem(f"{ep!r}: port must be 1-65535", "etcd", "endpoints", i))
        elif why := safety.ipv4_if_numeric(parts.hostname or ""):
            problems.append(at.problem(f"{ep!r}: {parts.hostname!r} {why}",
                                       "etcd", "endpoints", i))
    for name in ("ca", "cert", "key"):
        path = etcd[name]
        if isinstance(path, str) and (why := safety.local_file(path)):
            problems.append(at.problem(f"{path!r} {why}", "etcd", name))
    return problems


def coordination(m: Manifests, environment: str) -> Coordination:
    """How ``environment`` is driven (ssh unless its Inventory says etcd). The manifests
    have passed ``check_modes``; ``~/`` in a file path is this user's home."""
    at = m.modes.get(environment)
    if at is None:
        return Coordination()
    data = at.doc.get(at.path)
    etcd = data.get("etcd")
    if data["mode"] != "etcd" or etcd is None:
        return Coordination()
    return Coordination(
        mode="etcd",
        etcd=EtcdSettings(
            endpoints=tuple(etcd["endpoints"]),
            ca=os.path.expanduser(etcd["ca"]),
            cert=os.path.expanduser(etcd["cert"]),
            key=os.path.expanduser(etcd["key"]),
            lease_ttl=etcd.get("lease_ttl", DEFAULT_LEASE_TTL_S),
            agents=bool(etcd.get("agents", False)),
        ),
    )
