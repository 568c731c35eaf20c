"""Request records and their aggregates per interval.

A ``Request`` as HAProxy logged it becomes a ``Record`` (which service, revision,
container and host answered it, and its action) through ``Origins``, the mapping from
HAProxy's (backend, server) names to what runs there, made from the observed state
(``origins``), and an ``ActionTable`` per service. Records are then counted per
interval of ``INTERVAL_S`` seconds aligned to the Unix clock by the request's own arrival
time, per (service, revision, action, status class): ``Cell`` holds the count, the sum
of total times and histograms of total time and time to first byte.

Status classes: "1xx".."5xx" from the status; a status of -1 or 0, or a request HAProxy
answered itself without a server ("<NOSRV>"), is "err". A request with no server has
revision ``NO_SERVER`` ("-"): it is no revision's error.

Pure except ``Aggregator``, a container of cells its owner (the collector) locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler import identity
from reconciler.lb.haproxy.requestlog import Request
from reconciler.model import DesiredState, ObservedState
from reconciler.records.actions import ActionTable
from reconciler.records.histogram import Histogram

INTERVAL_S = 10
NO_SERVER = "-"  # revision, container and host of a request no server answered
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "err")
ERROR_CLASSES = frozenset({"5xx", "err"})


@dataclass(frozen=True)
class Origin:
    """What a (backend, server) of HAProxy is: which container of which release."""

    service: str
    revision: str
    container: str
    host: str


@dataclass(frozen=True)
class Record:
    """One request HAProxy answered (times in ms; ``ttfb_ms`` -1: no server answered)."""

    service: str
    revision: str
    container: str
    host: str
    action: str
    status: int
    ttfb_ms: int
    total_ms: int
    bytes: int
    time: int  # Unix seconds it arrived


@dataclass(frozen=True)
class Origins:
    """(backend, server) -> Origin, and backend -> service for the backends of the
    environment (a request without a server still belongs to its backend's service)."""

    servers: Mapping[tuple[str, str], Origin] = field(default_factory=dict)
    services: Mapping[str, str] = field(default_factory=dict)


def origins(observed: ObservedState, desired: DesiredState) -> Origins:
    """The mapping of ``desired``'s environment from what ``observed`` found: every
    container of the environment by its server name, every service by its backend."""
    env = desired.environment
    servers: dict[tuple[str, str], Origin] = {}
    services = {identity.backend_name(s.name): s.name for s in desired.services}
    for host in observed.hosts:
        for c in host.containers:
            if c.label(identity.ENVIRONMENT) != env:
                continue
            service = c.label(identity.SERVICE)
            backend = identity.backend_name(service)
            services.setdefault(backend, service)
            servers[(backend, identity.server_name(host.name, c.name))] = Origin(
                service, c.label(identity.REVISION), c.name, host.name
            )
    return Origins(servers, services)


def action_tables(desired: DesiredState, old: Mapping[str, ActionTable]) -> dict[str, ActionTable]:
    """An ``ActionTable`` per service of ``desired``: the one in ``old`` while the
    service's declared actions and limit are unchanged (it keeps the names it admitted),
    else a new one."""
    out = {}
    for s in desired.services:
        table = old.get(s.name)
        if table is None or table.declared != s.actions or table.limit != s.max_actions:
            table = ActionTable(s.actions, s.max_actions)
        out[s.name] = table
    return out


def status_class(status: int, server: str) -> str:
    """The status class of a request (see the module doc)."""
    if status <= 0 or server == "<NOSRV>" or status >= 600:
        return "err"
    return f"{status // 100}xx"


def to_record(
    r: Request, where: Origins, tables: Mapping[str, ActionTable]
) -> Record | None:
    """The record of ``r``; None when its backend is not one of the environment's
    services, or its server is not a container of it (another instance's, or gone)."""
    service = where.services.get(r.backend)
    if service is None:
        return None
    if r.server == "<NOSRV>":
        origin = Origin(service, NO_SERVER, NO_SERVER, NO_SERVER)
    else:
        found = where.servers.get((r.backend, r.server))
        if found is None:
            return None
        origin = found
    table = tables.get(service)
    action = table.name(r.method, r.path) if table is not None else "other"
    return Record(
        origin.service,
        origin.revision,
        origin.container,
        origin.host,
        action,
        r.status,
        r.response_ms,
        r.total_ms,
        r.bytes,
        r.time,
    )


Key = tuple[int, str, str, str, str]  # (interval start, service, revision, action, class)


@dataclass
class Cell:
    """The aggregate of one key: count, sum of total ms, histograms of total time and
    of time to first byte (requests with a TTFB only)."""

    count: int = 0
    sum_ms: float = 0.0
    total: Histogram = field(default_factory=Histogram)
    ttfb: Histogram = field(default_factory=Histogram)

    def add(self, rec: Record) -> None:
        self.count += 1
        total = max(rec.total_ms, 0)
        self.sum_ms += total
        self.total.add(total)
        if rec.ttfb_ms >= 0:
            self.ttfb.add(rec.ttfb_ms)

    def merge(self, other: Cell) -> Cell:
        self.count += other.count
        self.sum_ms += other.sum_ms
        self.total.merge(other.total)
        self.ttfb.merge(other.ttfb)
        return self


def key_of(rec: Record, interval_s: int = INTERVAL_S) -> Key:
    start = rec.time - rec.time % interval_s
    server = "<NOSRV>" if rec.container == NO_SERVER else rec.container
    return (start, rec.service, rec.revision, rec.action, status_class(rec.status, server))


def aggregate(records: Iterable[Record], interval_s: int = INTERVAL_S) -> dict[Key, Cell]:
    """Records counted per interval and key (see the module doc)."""
    cells: dict[Key, Cell] = {}
    for rec in records:
        k = key_of(rec, interval_s)
        cell = cells.get(k)
        if cell is None:
            cell = cells[k] = Cell()
        cell.add(rec)
    return cells


class Aggregator:
    """Cells accumulated since the last ``take``; the collector's buffer between
    flushes to the store. Its owner locks around ``add`` and ``take``."""

    def __init__(self, interval_s: int = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.cells: dict[Key, Cell] = {}

    def add(self, rec: Record) -> None:
        k = key_of(rec, self.interval_s)
        cell = self.cells.get(k)
        if cell is None:
            cell = self.cells[k] = Cell()
        cell.add(rec)

    def merge(self, cells: Mapping[Key, Cell]) -> None:
        """Add ``cells``, taking them over: the caller must not use them afterwards."""
        mine = self.cells
        for k, c in cells.items():
            into = mine.get(k)
            mine[k] = c if into is None else into.merge(c)

    def take(self) -> dict[Key, Cell]:
        """The cells so far; the aggregator starts empty again."""
        cells, self.cells = self.cells, {}
        return cells
