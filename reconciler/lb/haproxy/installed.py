"""Reading back the installed config: the section digests of the header and the server
lines, exactly as ``render`` writes them. Pure; ``ValueError`` names a bad header line.
"""

from __future__ import annotations

from reconciler.identity import parse_section_marker
from reconciler.lb.haproxy.lines import where

ConfigServer = tuple[str, str, str, int, int]


def parse_config_header(text: str) -> tuple[tuple[str, str], ...]:
    """``(section name, digest)`` pairs of the reconciler header, sorted.

    The header is the run of comment and blank lines at the top of the config; in it,
    ``# reconciler-section <name...> <digest>`` lines are read (name: every token
    between the marker and the last one, joined by one space). Other comments are
    ignored; so is anything after the first non-comment line. A marker line without a
    name or digest, or a section named twice, raises ``ValueError``.
    """
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        try:
            marker = parse_section_marker(stripped)
        except ValueError as exc:
            raise ValueError(f"config header: {where(number, line)}: {exc}") from None
        if marker is None:
            continue
        name, digest = marker
        if name in found:
            raise ValueError(f"config header: {where(number, line)}: section {name!r} twice")
        found[name] = digest
    return tuple(sorted(found.items()))


def parse_config_servers(text: str) -> tuple[ConfigServer, ...]:
    """(backend, server, address, port, weight) of each ``server`` line of the reconciler's
    rendered config (``server NAME ADDR:PORT weight W [check options]``), sorted. Lines of
    another form are skipped: this reads only what the renderer writes."""
    found: list[ConfigServer] = []
    backend = None
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if not line[0].isspace():
            backend = tokens[1] if tokens[0] == "backend" and len(tokens) > 1 else None
            continue
        if backend and tokens[0] == "server" and len(tokens) >= 5 and tokens[3] == "weight":
            address, _, port = tokens[2].rpartition(":")
            if port.isdigit() and tokens[4].isdigit():
                found.append((backend, tokens[1], address, int(port), int(tokens[4])))
    return tuple(sorted(found))
