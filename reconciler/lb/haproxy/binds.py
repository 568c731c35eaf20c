"""Can an LB host give HAProxy the addresses a new config binds?

``haproxy -c`` does not try to bind, and a reload whose new worker cannot bind fails
after the master has already started it: HAProxy 2.6 then refuses new connections on
every frontend for about two seconds while it rolls back. So before a config with new
binds is installed, each new bind is checked on its own host from two reads that
iproute2 gives on any Linux host (argv only, no shell): the host's addresses
(``ip -o addr show``) and its listening TCP sockets with their processes (``ss -Hltnp``).

Parsers are pure; ``bind_problems`` is the check.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

WILDCARDS = frozenset({"*", "", "0.0.0.0", "::"})  # noqa: S104 (names them, binds nothing)
_ADDR = re.compile(r"\sinet6?\s+([0-9a-fA-F.:]+)(?:/\d+)?")
_PIDS = re.compile(r"pid=(\d+)")


@dataclass(frozen=True)
class Listener:
    address: str  # "" for a wildcard
    port: int
    pids: frozenset[int]


_BIND = re.compile(r"^\s+bind\s+(\S+)", re.M)


def config_binds(text: str) -> set[tuple[str, int]]:
    """(address, port) of the ``bind`` lines of a config ("" for a wildcard address)."""
    out = set()
    for where in _BIND.findall(text):
        address, _, port = where.rpartition(":")
        if port.isdigit():
            address = address.strip("[]")
            out.add((bind_key(address), int(port)))
    return out


def parse_addresses(text: str) -> frozenset[str]:
    """The addresses of ``ip -o addr show`` output (IPv4 and IPv6, without prefixes)."""
    return frozenset(_normal(m.group(1)) for m in _ADDR.finditer(text))


def parse_listeners(text: str) -> tuple[Listener, ...]:
    """The listening sockets of ``ss -Hltnp`` output (``*``, ``0.0.0.0``, ``[::]`` are
    wildcards; a line ss prints without a process has no pids)."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4 or words[0] != "LISTEN":
            continue
        address, _, port = words[3].rpartition(":")
        address = address.strip("[]").split("%")[0]
        if not port.isdigit():
            continue
        out.append(
            Listener(
                "" if address in WILDCARDS else _normal(address),
                int(port),
                frozenset(int(p) for p in _PIDS.findall(line)),
            )
        )
    return tuple(out)


def _local(address: str, addresses: Collection[str]) -> bool:
    """``address`` is the host's: one of its addresses, or a loopback address while the
    host has one (Linux answers on all of 127.0.0.0/8 through ``lo``)."""
    if address in addresses:
        return True
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
    return loopback and any(_is_loopback(a) for a in addresses)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def bind_key(address: str) -> str:
    """A bind address as compared: "" for any wildcard, else its normal form."""
    return "" if address in WILDCARDS else _normal(address)


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def bind_problems(
    binds: Iterable[tuple[str, str, int]],
    addresses: Collection[str],
    listeners: Iterable[Listener],
    own_pids: Collection[int],
) -> list[str]:
    """Why each (frontend, address, port) cannot be bound on the host: the address is not
    one of the host's, or a process that is not this HAProxy (``own_pids``) listens on
    the port at that address or a wildcard. [] when every bind can be taken."""
    taken = [x for x in listeners if not (x.pids and x.pids <= set(own_pids))]
    problems = []
    for frontend, address, port in binds:
        where = f"{address or '*'}:{port}"
        wild = not bind_key(address)
        if not wild and not _local(_normal(address), addresses):
            problems.append(f"frontend {frontend}: {where}: the address is not on this host")
            continue
        key = bind_key(address)
        clash = [x for x in taken if x.port == port and (wild or x.address in ("", key))]
        if clash:
            who = ", ".join(sorted({f"pid {p}" for x in clash for p in x.pids})) or "a process"
            problems.append(f"frontend {frontend}: {where}: the port is in use by {who}")
    return problems
