"""Request records without ``watch``: a pass of ``reconcile apply`` ingests the ring it
reads (``show events reqlog``, the whole ring), counting each line once across passes.

The store keeps, per LB host, the (pid, request number) of the last line ingested. The
ring is in the order lines were written, so the lines after that one in the next dump
are the new ones; when it is not in the dump (the ring wrapped past it, or a reload
started a new worker with a new ring), every line is new. Requests that finish while no
pass runs and leave the ring before the next pass are not recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.lb.haproxy.requestlog import Request, parse_events
from reconciler.records.actions import ActionTable
from reconciler.records.aggregate import Origins, aggregate, to_record
from reconciler.records.store import RecordsStore


def after_marker(requests: Sequence[Request], marker: tuple[int, int] | None) -> list[Request]:
    """The requests after the one ``marker`` names (all of them when it is absent)."""
    if marker is not None:
        for i in range(len(requests) - 1, -1, -1):
            r = requests[i]
            if (r.pid, r.number) == marker:
                return list(requests[i + 1 :])
    return list(requests)


def ingest_dump(
    store: RecordsStore,
    lb_host: str,
    text: str,
    where: Origins,
    tables: Mapping[str, ActionTable],
    now: float | None = None,
) -> int:
    """Record the new requests of one ring dump of ``lb_host``; how many were recorded
    (requests of other environments are skipped but still move the marker)."""
    requests = parse_events(text)
    fresh = after_marker(requests, store.cursor(lb_host))
    if not fresh:
        return 0
    records = [rec for rec in (to_record(r, where, tables) for r in fresh) if rec]
    store.write(aggregate(records), now)
    last = requests[-1]
    store.set_cursor(lb_host, last.pid, last.number)
    return len(records)
