"""The trust boundary: what one environment's manifests ask for, checked against the
operator's policy (``reconciler.desired.policy``).

Pure: manifests and policy in, problems (file:line: field: message) and hosts out. Called
by ``manifests.resolve`` when a command acts for the operator (plan, apply, status,
watch, validate); ``diff`` and the format checks of ``load_manifests`` know no policy.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from reconciler.desired.policy import Policy
from reconciler.errors import Problem
from reconciler.model import Host

if TYPE_CHECKING:
    from reconciler.desired.loader import Document
    from reconciler.desired.manifests import Manifests


def check_environment(
    m: Manifests, env_name: str, env_doc: Document | None, services: list[str], policy: Policy
) -> list[Problem]:
    """Every way ``env_name``'s manifests (its enabled ``services``, its secrets, the
    inventory's SSH hosts) step outside ``policy``."""
    problems: list[Problem] = []
    extra_denied = _host_paths(m)
    for name in services:
        doc = m.services[name]
        for i, vol in enumerate(doc.data.get("volumes", [])):
            if vol["type"] != "bind":
                continue
            if why := policy.bind_problem(vol["source"], extra_denied):
                problems.append(doc.problem(("volumes", i, "source"), f"{vol['source']!r} {why}"))
    rules = policy.secret_rules(env_name)
    if env_doc is not None:
        for name, source in env_doc.data.get("secrets", {}).items():
            if "file" in source and (why := rules.file_problem(source["file"])):
                problems.append(
                    env_doc.problem(("secrets", name, "file"), f"{source['file']!r} {why}")
                )
            if "env" in source and (why := rules.env_problem(source["env"])):
                problems.append(
                    env_doc.problem(("secrets", name, "env"), f"{source['env']!r} {why}")
                )
    for name, at in m.hosts.items():
        problems += _check_ssh(name, at.doc, at.path, policy)
    return problems


def _host_paths(m: Manifests) -> list[str]:
    """The Docker sockets and state dirs the inventory names on SSH hosts: as much the
    keys to those hosts as the local ones."""
    out: list[str] = []
    for at in m.hosts.values():
        ssh = at.doc.get((*at.path, "connection", "ssh"))
        if isinstance(ssh, dict):
            out += [ssh[k] for k in ("docker_socket", "state_dir") if isinstance(ssh.get(k), str)]
    return out


def _same_file(a: str, b: str | None) -> bool:
    return b is not None and os.path.expanduser(a) == os.path.expanduser(b)


def _check_ssh(name: str, doc: Document, path: tuple[Any, ...], policy: Policy) -> list[Problem]:
    ssh = doc.get((*path, "connection", "ssh"))
    if not isinstance(ssh, dict):
        return []
    trust = policy.ssh_for(name)
    at = (*path, "connection", "ssh")
    owned = f"the operator's policy ({policy.source}) sets it for host {name!r}"
    problems = []
    address = doc.get((*path, "address"))
    if trust.address is not None and address != trust.address:
        problems.append(
            doc.problem(
                (*path, "address"),
                f"{address!r} is not {trust.address!r}, the address the operator's policy "
                f"pins for host {name!r}",
            )
        )
    if ssh.get("host_key_checking") == "accept-new" and trust.host_key_checking != "accept-new":
        problems.append(
            doc.problem(
                (*at, "host_key_checking"),
                f"'accept-new' is not allowed for host {name!r} by the operator's policy "
                f"({policy.source}): strict checking against {trust.known_hosts}",
            )
        )
    if "known_hosts" in ssh and not _same_file(ssh["known_hosts"], trust.known_hosts):
        problems.append(
            doc.problem(
                (*at, "known_hosts"),
                f"{ssh['known_hosts']!r} is not {trust.known_hosts!r}: {owned} (leave it out)",
            )
        )
    if "key" in ssh and not _same_file(ssh["key"], trust.key):
        policy_key = (
            repr(trust.key) if trust.key else "the SSH agent's and ~/.ssh/id_* (no key file)"
        )
        problems.append(
            doc.problem(
                (*at, "key"),
                f"{ssh['key']!r} is not {policy_key}: {owned} (leave it out)",
            )
        )
    return problems


def trusted_host(host: Host, policy: Policy) -> Host:
    """``host`` with the SSH trust settings of the policy: its known_hosts and key, and
    ``accept-new`` only where both the policy and the manifest ask for it."""
    if host.ssh is None:
        return host
    trust = policy.ssh_for(host.name)
    accept_new = (
        trust.host_key_checking == "accept-new" and host.ssh.host_key_checking == "accept-new"
    )
    ssh = replace(
        host.ssh,
        known_hosts=trust.known_hosts,
        key=trust.key,
        host_key_checking="accept-new" if accept_new else "strict",
    )
    return replace(host, ssh=ssh)
