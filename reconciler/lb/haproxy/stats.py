"""Parsers of the stats socket's answers: ``show servers state``, ``show stat`` (CSV)
and ``show info``.

They take the text exactly as HAProxy 2.6 prints it (see ``tests/fixtures/haproxy``) and
either return typed values or raise ``ValueError`` naming the 1-based line that does not
fit. They never do I/O.
"""

from __future__ import annotations

import csv
import re
from typing import Literal

from reconciler.lb.haproxy.lines import numbered, where
from reconciler.model import ServerState, ServerStats

OpState = Literal["stopped", "starting", "running", "stopping"]

# srv_op_state (enum srv_state)
_OP_STATES: dict[int, OpState] = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}

# srv_admin_state bits (enum srv_admin in 2.6 include/haproxy/server-t.h and
# doc/management.txt "show servers state").
SRV_ADMF_FMAINT = 0x01  # forced into maintenance (CLI, stats page, or "disabled" in config)
SRV_ADMF_IMAINT = 0x02  # maintenance inherited from a tracked server
SRV_ADMF_CMAINT = 0x04  # "disabled" in the config; alone it does NOT mean maintenance
SRV_ADMF_FDRAIN = 0x08  # forced into drain
SRV_ADMF_IDRAIN = 0x10  # drain inherited from a tracked server
SRV_ADMF_RMAINT = 0x20  # maintenance because the address does not resolve
SRV_ADMF_HMAINT = 0x40  # FQDN was set from the CLI; not an admin state
_ADMIN_MAINT = SRV_ADMF_FMAINT | SRV_ADMF_IMAINT | SRV_ADMF_RMAINT  # 2.6 SRV_ADMF_MAINT
_ADMIN_DRAIN = SRV_ADMF_FDRAIN | SRV_ADMF_IDRAIN  # 2.6 SRV_ADMF_DRAIN
_ADMIN_KNOWN = 0x7F

_STATE_VERSION = "1"
_STATE_REQUIRED = (
    "be_name",
    "srv_name",
    "srv_addr",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_port",
)
_STAT_REQUIRED = ("pxname", "svname", "type", "status", "weight", "scur", "stot")
_STAT_TYPE_SERVER = "2"  # 0 frontend, 1 backend, 2 server, 3 listener


def _int(value: str | None, number: int, line: str, field: str) -> int:
    """An integer field; an empty or absent value is 0."""
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where(number, line)}: {field} is not an integer: {value!r}") from None


def admin_names(flags: int) -> tuple[str, ...]:
    """Names of the administrative states set in a ``srv_admin_state`` mask.

    ``maint`` when forced, inherited or resolution maintenance is set (the 2.6 mask
    SRV_ADMF_MAINT = 0x23), ``drain`` when forced or inherited drain is set (0x18), in
    that order; ``()`` means ready. CMAINT (0x04) only records that the config said
    ``disabled`` (HAProxy then also sets FMAINT; ``set server ... state ready`` clears
    FMAINT and leaves 0x04 on a serving server) and HMAINT (0x40) only records an FQDN
    change; neither yields a name. Bits above 0x40 raise ``ValueError``.
    """
    if flags < 0 or flags & ~_ADMIN_KNOWN:
        raise ValueError(f"unknown srv_admin_state bits in {flags:#x}")
    names: list[str] = []
    if flags & _ADMIN_MAINT:
        names.append("maint")
    if flags & _ADMIN_DRAIN:
        names.append("drain")
    return tuple(names)


def parse_servers_state(text: str) -> tuple[ServerState, ...]:
    """Servers of ``show servers state [<backend>]`` (format version 1), in output order.

    The first non-empty line must be the version ``1``, the second the ``# be_id ...``
    header; columns are looked up by header name. ``weight`` is ``srv_uweight``.
    """
    lines = numbered(text)
    if not lines:
        raise ValueError("show servers state: empty output")
    number, first = lines[0]
    if first.strip() != _STATE_VERSION:
        raise ValueError(f"show servers state: {where(number, first)}: expected version 1")
    number, header = lines[1] if len(lines) > 1 else (number + 1, "")
    if not header.startswith("# be_id "):
        raise ValueError(f"show servers state: {where(number, header)}: expected '# be_id ...'")
    columns = header[1:].split()
    missing = [c for c in _STATE_REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"show servers state: {where(number, header)}: missing {missing}")
    servers: list[ServerState] = []
    for number, line in lines[2:]:
        if line.startswith("#"):
            continue
        values = line.split()
        if len(values) != len(columns):
            raise ValueError(
                f"show servers state: {where(number, line)}: "
                f"{len(values)} fields, header has {len(columns)}"
            )
        row = dict(zip(columns, values, strict=True))
        op = _int(row["srv_op_state"], number, line, "srv_op_state")
        if op not in _OP_STATES:
            raise ValueError(f"show servers state: {where(number, line)}: srv_op_state {op}")
        try:
            admin = admin_names(_int(row["srv_admin_state"], number, line, "srv_admin_state"))
        except ValueError as e:
            raise ValueError(f"show servers state: {where(number, line)}: {e}") from None
        servers.append(
            ServerState(
                backend=row["be_name"],
                server=row["srv_name"],
                address=row["srv_addr"],
                port=_int(row["srv_port"], number, line, "srv_port"),
                weight=_int(row["srv_uweight"], number, line, "srv_uweight"),
                operational=_OP_STATES[op],
                admin=admin,
            )
        )
    return tuple(servers)


def parse_stat_csv(text: str) -> tuple[ServerStats, ...]:
    """Server rows (``type`` 2) of ``show stat`` CSV, in output order.

    The first non-empty line must be the ``# pxname,svname,...`` header. FRONTEND,
    BACKEND and listener rows are skipped. Empty or absent counters are 0; ``weight`` is
    the ``weight`` column (effective weight, 0 while drained by ``set weight 0``).
    """
    lines = numbered(text)
    if not lines:
        raise ValueError("show stat: empty output")
    number, header = lines[0]
    if not header.startswith("# pxname,"):
        raise ValueError(f"show stat: {where(number, header)}: expected '# pxname,svname,...'")
    columns = next(csv.reader([header[2:]]))
    missing = [c for c in _STAT_REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"show stat: {where(number, header)}: missing {missing}")
    stats: list[ServerStats] = []
    for number, line in lines[1:]:
        try:
            values = next(csv.reader([line], strict=True))
        except csv.Error as e:
            raise ValueError(f"show stat: {where(number, line)}: {e}") from None
        if len(values) != len(columns):
            raise ValueError(
                f"show stat: {where(number, line)}: {len(values)} fields, header has {len(columns)}"
            )
        row = dict(zip(columns, values, strict=True))
        if row["type"] != _STAT_TYPE_SERVER:
            continue

        def num(field: str, row: dict[str, str] = row, n: int = number, ln: str = line) -> int:
            return _int(row.get(field), n, ln, field)

        stats.append(
            ServerStats(
                backend=row["pxname"],
                server=row["svname"],
                status=row["status"],
                weight=num("weight"),
                current_sessions=num("scur"),
                total_sessions=num("stot"),
                hrsp_1xx=num("hrsp_1xx"),
                hrsp_2xx=num("hrsp_2xx"),
                hrsp_3xx=num("hrsp_3xx"),
                hrsp_4xx=num("hrsp_4xx"),
                hrsp_5xx=num("hrsp_5xx"),
                hrsp_other=num("hrsp_other"),
                eresp=num("eresp"),
                econ=num("econ"),
                wretr=num("wretr"),
                wredis=num("wredis"),
                rtime_ms=num("rtime"),
                ttime_ms=num("ttime"),
                check_status=row.get("check_status", "").lstrip("* "),
            )
        )
    return tuple(stats)


def info_pid(text: str) -> int:
    """The ``Pid:`` of ``show info`` output (the answering worker); 0 when absent."""
    m = re.search(r"^Pid: (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0
