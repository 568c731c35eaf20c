"""Observation of one HAProxy: its installed config (file) and its runtime state (stats
socket), read on the host of a transport, parsed into an ``ObservedLB``.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.errors import ObserveError
from reconciler.lb.haproxy.certs import (
    PemError,
    config_certificates,
    parse_show_ssl_cert,
    pem_facts,
)
from reconciler.lb.haproxy.installed import ConfigServer, parse_config_header, parse_config_servers
from reconciler.lb.haproxy.runtime import RuntimeSocket, SocketUnavailable
from reconciler.lb.haproxy.stats import info_pid, parse_servers_state, parse_stat_csv
from reconciler.model import CertState, ObservedLB, Pairs
from reconciler.transport.base import Transport, TransportError
from reconciler.transport.local import LocalTransport


def read_config(
    config_path: str | None, transport: Transport | None = None
) -> tuple[Pairs, tuple[ConfigServer, ...], tuple[str, ...]]:
    """Section digests, server lines and certificate paths of the installed config;
    empty when there is no file. ``ObserveError`` naming the path when it cannot be read
    or its header is bad."""
    if config_path is None:
        return (), (), ()
    try:
        text = (transport or LocalTransport()).read_text(config_path)
    except TransportError as e:
        raise ObserveError(f"HAProxy config {config_path}: {e}") from None
    if text is None:
        return (), (), ()
    try:
        return parse_config_header(text), parse_config_servers(text), config_certificates(text)
    except ValueError as e:
        raise ObserveError(f"HAProxy config {config_path}: {e}") from None


def read_certificates(
    paths: tuple[str, ...], sock: RuntimeSocket, transport: Transport
) -> tuple[CertState, ...]:
    """Each certificate file's facts (read on the LB host) and what HAProxy serves from
    its path (``show ssl cert PATH``, all in one connection). A file that cannot be read
    or parsed is a ``problem`` of its state, not an error: the pass goes on and its
    outcome check reports it. The file's text is never kept."""
    if not paths:
        return ()
    loaded = parse_show_ssl_cert(sock.commands([f"show ssl cert {p}" for p in paths]))
    out: list[CertState] = []
    for path in paths:
        serial, fingerprint = loaded.get(path, (None, None))
        state = CertState(path=path, loaded_serial=serial, loaded_fingerprint=fingerprint)
        try:
            text = transport.read_text(path)
            if text is None:
                raise PemError("no such file")
            facts = pem_facts(text)
        except (TransportError, PemError) as e:
            out.append(replace(state, problem=f"certificate file {path}: {e}"))
            continue
        out.append(
            replace(
                state,
                file_digest=facts.digest,
                file_serial=facts.serial,
                file_fingerprint=facts.fingerprint,
                file_validity=facts.validity,
                file_names=facts.names,
            )
        )
    return tuple(out)


def observe_haproxy(
    host: str, stats_socket: str, config_path: str | None, transport: Transport | None = None
) -> ObservedLB:
    """Snapshot of one HAProxy through its stats socket and config file (on the host of
    ``transport``; this machine when None).

    ``running`` is False (and servers/stats empty) when the socket file is missing or
    refuses connections; ``config_sections`` describes the installed config either way.
    ``ObserveError`` naming the socket when it answers late, wrongly or not at all.
    """
    sections, config_servers, cert_paths = read_config(config_path, transport)
    sock = RuntimeSocket(stats_socket, transport=transport)
    try:
        state_text = sock.command("show servers state")
    except SocketUnavailable:
        return ObservedLB(
            host=host, running=False, config_sections=sections, config_servers=config_servers
        )
    # One connection for both: the worker's pid says whose counters these are.
    info_and_stat = sock.commands(["show info", "show stat"])
    info_text, _, rest = info_and_stat.partition("# pxname,")
    stat_text = "# pxname," + rest
    try:
        servers = parse_servers_state(state_text)
        stats = parse_stat_csv(stat_text)
    except ValueError as e:
        raise ObserveError(f"HAProxy socket {stats_socket}: {e}") from None
    return ObservedLB(
        host=host,
        running=True,
        config_sections=sections,
        config_servers=config_servers,
        servers=servers,
        stats=stats,
        worker_pid=info_pid(info_text),
        certificates=read_certificates(cert_paths, sock, transport or LocalTransport()),
    )
