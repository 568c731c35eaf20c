"""HAProxy runtime API: pure parsers of its outputs and a one-command-per-connection client.

The parsers take the text exactly as HAProxy 2.6 prints it (see
``tests/fixtures/haproxy``) and either return typed values or raise ``ValueError`` naming
the 1-based line that does not fit. They never do I/O. ``RuntimeSocket`` talks to a
stats socket (``level admin``) or to the master CLI; ``observe_haproxy`` combines both
into an ``ObservedHAProxy`` snapshot.
"""

from __future__ import annotations

import csv
import re
import socket
import time
from dataclasses import dataclass
from typing import Literal

from reconciler.errors import ObserveError
from reconciler.identity import parse_section_marker
from reconciler.model import ObservedHAProxy, Pairs, ServerState, ServerStats
from reconciler.transport.base import StreamUnavailable, Transport, TransportError
from reconciler.transport.local import LocalTransport

OpState = Literal["stopped", "starting", "running", "stopping"]
WorkerStatus = Literal["current", "old"]

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


def _where(number: int, line: str) -> str:
    shown = line if len(line) <= 120 else line[:117] + "..."
    return f"line {number}: {shown!r}"


def _int(value: str | None, number: int, line: str, field: str) -> int:
    """An integer field; an empty or absent value is 0."""
    if value is None or value == "":
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{_where(number, line)}: {field} is not an integer: {value!r}") from None


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
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError("show servers state: empty output")
    number, first = lines[0]
    if first.strip() != _STATE_VERSION:
        raise ValueError(f"show servers state: {_where(number, first)}: expected version 1")
    number, header = lines[1] if len(lines) > 1 else (number + 1, "")
    if not header.startswith("# be_id "):
        raise ValueError(f"show servers state: {_where(number, header)}: expected '# be_id ...'")
    columns = header[1:].split()
    missing = [c for c in _STATE_REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"show servers state: {_where(number, header)}: missing {missing}")
    servers: list[ServerState] = []
    for number, line in lines[2:]:
        if line.startswith("#"):
            continue
        values = line.split()
        if len(values) != len(columns):
            raise ValueError(
                f"show servers state: {_where(number, line)}: "
                f"{len(values)} fields, header has {len(columns)}"
            )
        row = dict(zip(columns, values, strict=True))
        op = _int(row["srv_op_state"], number, line, "srv_op_state")
        if op not in _OP_STATES:
            raise ValueError(f"show servers state: {_where(number, line)}: srv_op_state {op}")
        try:
            admin = admin_names(_int(row["srv_admin_state"], number, line, "srv_admin_state"))
        except ValueError as e:
            raise ValueError(f"show servers state: {_where(number, line)}: {e}") from None
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
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise ValueError("show stat: empty output")
    number, header = numbered[0]
    if not header.startswith("# pxname,"):
        raise ValueError(f"show stat: {_where(number, header)}: expected '# pxname,svname,...'")
    columns = next(csv.reader([header[2:]]))
    missing = [c for c in _STAT_REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"show stat: {_where(number, header)}: missing {missing}")
    stats: list[ServerStats] = []
    for number, line in numbered[1:]:
        try:
            values = next(csv.reader([line], strict=True))
        except csv.Error as e:
            raise ValueError(f"show stat: {_where(number, line)}: {e}") from None
        if len(values) != len(columns):
            raise ValueError(
                f"show stat: {_where(number, line)}: "
                f"{len(values)} fields, header has {len(columns)}"
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


@dataclass(frozen=True)
class WorkerProc:
    """One worker listed by the master's ``show proc``."""

    pid: int
    reloads: int  # reloads this worker has survived
    status: WorkerStatus  # "current": under "# workers"; "old": under "# old workers"


@dataclass(frozen=True)
class MasterProcs:
    """The master's ``show proc``: a reload happened when ``reloads`` grew *and* the
    current worker pids changed (a failed reload also increments ``reloads``, sets
    ``failed_reloads`` and keeps the worker)."""

    master_pid: int
    reloads: int
    failed_reloads: int  # the "[failed: N]" of the master line; 0 after a good reload
    workers: tuple[WorkerProc, ...]

    @property
    def current_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self.workers if w.status == "current")

    @property
    def old_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self.workers if w.status == "old")


_PROC_HEADER = re.compile(r"#<PID>\s+<type>\s+<reloads>\s+<uptime>\s+<version>\s*")
_PROC_MASTER = re.compile(r"(\d+)\s+master\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?\s+\S+\s+\S+\s*")
_PROC_WORKER = re.compile(r"(\d+)\s+worker\s+(\d+)\s+\S+\s+\S+\s*")
_PROC_PROGRAM = re.compile(r"\d+\s+\S+\s+\d+\s+\S+\s+\S+\s*")
_PROC_SECTIONS: dict[str, WorkerStatus | None] = {
    "# workers": "current",
    "# old workers": "old",
    "# programs": None,
}


def parse_show_proc(text: str) -> MasterProcs:
    """The master CLI's ``show proc`` of HAProxy 2.6.

    Shape: the ``#<PID> <type> <reloads> <uptime> <version>`` header, one ``master``
    line (``<pid> master <reloads> [failed: <n>] <uptime> <version>``), then sections
    ``# workers``, ``# old workers`` (only while old workers live) and ``# programs``.
    Program lines are validated and ignored.
    """
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered or not _PROC_HEADER.fullmatch(numbered[0][1]):
        number, line = numbered[0] if numbered else (1, "")
        raise ValueError(f"show proc: {_where(number, line)}: expected '#<PID> <type> ...'")
    if len(numbered) < 2:
        raise ValueError(f"show proc: {_where(*numbered[0])}: no master line follows")
    number, line = numbered[1]
    master = _PROC_MASTER.fullmatch(line)
    if master is None:
        raise ValueError(f"show proc: {_where(number, line)}: expected the master line")
    section: WorkerStatus | None = None
    in_section = False
    workers: list[WorkerProc] = []
    for number, line in numbered[2:]:
        if line.startswith("#"):
            key = " ".join(line.split())
            if key not in _PROC_SECTIONS:
                raise ValueError(f"show proc: {_where(number, line)}: unknown section")
            section, in_section = _PROC_SECTIONS[key], True
            continue
        if not in_section:
            raise ValueError(f"show proc: {_where(number, line)}: line outside a section")
        if section is None:
            if not _PROC_PROGRAM.fullmatch(line):
                raise ValueError(f"show proc: {_where(number, line)}: bad program line")
            continue
        worker = _PROC_WORKER.fullmatch(line)
        if worker is None:
            raise ValueError(f"show proc: {_where(number, line)}: expected a worker line")
        workers.append(WorkerProc(int(worker[1]), int(worker[2]), section))
    return MasterProcs(
        master_pid=int(master[1]),
        reloads=int(master[2]),
        failed_reloads=int(master[3] or 0),
        workers=tuple(workers),
    )


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
            raise ValueError(f"config header: {_where(number, line)}: {exc}") from None
        if marker is None:
            continue
        name, digest = marker
        if name in found:
            raise ValueError(f"config header: {_where(number, line)}: section {name!r} twice")
        found[name] = digest
    return tuple(sorted(found.items()))


class SocketUnavailable(ObserveError):
    """Nothing listens on the socket path (missing file or connection refused)."""


class RuntimeSocket:
    """One HAProxy CLI socket: a stats socket or the master CLI (same protocol).

    Every ``command`` opens a new connection, sends the command and a newline, shuts
    down its writing side (the 2.6 master CLI only answers and closes after that) and
    reads until HAProxy closes. ``timeout`` bounds the whole exchange. The socket is on
    the host of ``transport`` (this machine when None), e.g. an LB host over SSH.
    """

    def __init__(self, path: str, timeout: float = 5.0, transport: Transport | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.transport = transport or LocalTransport()

    def command(self, cmd: str) -> str:
        """The full answer to ``cmd``, decoded as UTF-8 (undecodable bytes replaced).

        ``ValueError`` for an empty command or one containing a newline, carriage
        return, NUL or ``;`` (one command per call, nothing chained). ``SocketUnavailable``
        when nothing listens; ``ObserveError`` naming the path on any other failure or
        when the deadline passes. HAProxy's own error answers are returned as text.
        """
        return self.commands([cmd])

    def commands(self, cmds: list[str]) -> str:
        """Several commands in one connection (HAProxy runs ``a; b`` in order and
        concatenates their answers): one round trip, which counts over SSH. Each
        command is checked like ``command``'s."""
        for cmd in cmds:
            if not cmd.strip() or any(c in cmd for c in "\n\r\0;"):
                raise ValueError(f"refusing runtime API command {cmd!r}")
        cmd = "; ".join(cmds)
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        where = f"HAProxy socket {self.path}"
        if self.transport.name != "local":
            where += f" on {self.transport.name}"
        try:
            sock = self.transport.open_unix(self.path, self.timeout)
        except StreamUnavailable as e:
            raise SocketUnavailable(f"{where}: {e}") from None
        except TransportError as e:
            raise ObserveError(f"{where}: {e}") from None
        try:
            sock.sendall(cmd.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            raise ObserveError(f"{where}: no complete answer within {self.timeout}s") from None
        except OSError as e:
            raise ObserveError(f"{where}: {e.strerror or e}") from None
        finally:
            sock.close()
        return b"".join(chunks).decode("utf-8", errors="replace")


ConfigServer = tuple[str, str, str, int, int]


def parse_config_servers(text: str) -> tuple[ConfigServer, ...]:
    """(backend, server, address, port, weight) of each ``server`` line of the reconciler's
    rendered config (``server NAME ADDR:PORT weight W``), sorted. Lines of another form
    are skipped: this reads only what the renderer writes."""
    found: list[ConfigServer] = []
    backend = None
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if not line[0].isspace():
            backend = tokens[1] if tokens[0] == "backend" and len(tokens) > 1 else None
            continue
        if backend and tokens[0] == "server" and len(tokens) == 5 and tokens[3] == "weight":
            address, _, port = tokens[2].rpartition(":")
            if port.isdigit() and tokens[4].isdigit():
                found.append((backend, tokens[1], address, int(port), int(tokens[4])))
    return tuple(sorted(found))


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


def info_pid(text: str) -> int:
    """The ``Pid:`` of ``show info`` output (the answering worker); 0 when absent."""
    m = re.search(r"^Pid: (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def observe_haproxy(
    host: str, stats_socket: str, config_path: str | None, transport: Transport | None = None
) -> ObservedHAProxy:
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
        return ObservedHAProxy(
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
    return ObservedHAProxy(
        host=host,
        running=True,
        config_sections=sections,
        config_servers=config_servers,
        servers=servers,
        stats=stats,
        worker_pid=info_pid(info_text),
    )
