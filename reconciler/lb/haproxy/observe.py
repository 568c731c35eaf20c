"""Observation of one HAProxy: its installed config (file) and its runtime state (stats
socket), read on the host of a transport, parsed into an ``ObservedLB``.
"""

from __future__ import annotations

from reconciler.errors import ObserveError
from reconciler.lb.haproxy.installed import ConfigServer, parse_config_header, parse_config_servers
from reconciler.lb.haproxy.runtime import RuntimeSocket, SocketUnavailable
from reconciler.lb.haproxy.stats import info_pid, parse_servers_state, parse_stat_csv
from reconciler.model import ObservedLB, Pairs
from reconciler.transport.base import Transport, TransportError
from reconciler.transport.local import LocalTransport


def read_config(
    config_path: str | None, transport: Transport | None = None
) -> tuple[Pairs, tuple[ConfigServer, ...]]:
    """Section digests and server lines of the installed config; empty when there is no
    file. ``ObserveError`` naming the path when it cannot be read or its header is bad."""
    if config_path is None:
        return (), ()
    try:
        text = (transport or LocalTransport()).read_text(config_path)
    except TransportError as e:
        raise ObserveError(f"HAProxy config {config_path}: {e}") from None
    if text is None:
        return (), ()
    try:
        return parse_config_header(text), parse_config_servers(text)
    except ValueError as e:
        raise ObserveError(f"HAProxy config {config_path}: {e}") from None


def observe_haproxy(
    host: str, stats_socket: str, config_path: str | None, transport: Transport | None = None
) -> ObservedLB:
    """Snapshot of one HAProxy through its stats socket and config file (on the host of
    ``transport``; this machine when None).

    ``running`` is False (and servers/stats empty) when the socket file is missing or
    refuses connections; ``config_sections`` describes the installed config either way.
    ``ObserveError`` naming the socket when it answers late, wrongly or not at all.
    """
    sections, config_servers = read_config(config_path, transport)
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
    )
