"""Requests -> records -> aggregates: the mapping from HAProxy's names, status classes,
intervals aligned to the clock, and the one-shot ring ingestion's marker."""

from __future__ import annotations

from dataclasses import replace

from support import converge, desired, service

from reconciler import identity
from reconciler.lb.haproxy.requestlog import Request
from reconciler.model import ActionSpec, ObservedContainer, ObservedHost, ObservedState
from reconciler.records.actions import ActionTable
from reconciler.records.aggregate import (
    Aggregator,
    Origin,
    action_tables,
    aggregate,
    origins,
    status_class,
    to_record,
)
from reconciler.records.oneshot import after_marker


def container(name: str, svc: str, rev: str, env: str = "prod") -> ObservedContainer:
    labels = ((identity.ENVIRONMENT, env), (identity.SERVICE, svc), (identity.REVISION, rev))
    return ObservedContainer(name, name, labels, "running", "healthy", "sha256:x")


def world() -> tuple[ObservedState, object]:
    d = desired(service("web", [("v1", 50), ("v2", 50)]))
    obs = ObservedState(
        hosts=(
            ObservedHost("h1", (container("a", "web", "v1"), container("b", "web", "v2"),
                                container("z", "web", "v9", env="staging"))),
        )
    )
    return obs, d


def req(server: str, status: int = 200, t: int = 1_700_000_005, total: int = 12,
        ttfb: int = 3, path: str = "/orders/17", n: int = 1) -> Request:
    return Request("be_web", server, status, ttfb, total, 42, n, 100, t, "GET", path)


def test_origins_map_servers_of_the_environment_only() -> None:
    obs, d = world()
    where = origins(obs, d)  # type: ignore[arg-type]
    assert where.servers == {
        ("be_web", "h1.a"): Origin("web", "v1", "a", "h1"),
        ("be_web", "h1.b"): Origin("web", "v2", "b", "h1"),
    }
    assert where.services == {"be_web": "web"}


def test_origins_of_a_converged_world_name_every_server() -> None:
    d = desired(service("web", [("v1", 100)], replicas=2))
    where = origins(converge(d), d)
    assert sorted(o.revision for o in where.servers.values()) == ["v1", "v1"]


def test_status_classes() -> None:
    assert [status_class(s, "h1.a") for s in (101, 200, 304, 404, 503, -1, 0)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx", "err", "err"]
    assert status_class(503, "<NOSRV>") == "err"
    assert status_class(200, "<NOSRV>") == "err"


def test_records_name_service_revision_container_host_and_action() -> None:
    obs, d = world()
    where = origins(obs, d)  # type: ignore[arg-type]
    tables = {"web": ActionTable((ActionSpec("orders.show", "/orders/{id}", "GET"),), 5)}
    rec = to_record(req("h1.b"), where, tables)
    assert rec is not None
    assert (rec.service, rec.revision, rec.container, rec.host, rec.action) == (
        "web", "v2", "b", "h1", "orders.show")
    assert (rec.status, rec.ttfb_ms, rec.total_ms, rec.bytes) == (200, 3, 12, 100)
    assert to_record(req("h1.z"), where, tables) is None  # another environment's container
    assert to_record(replace(req("h1.a"), backend="be_other"), where, tables) is None
    nosrv = to_record(req("<NOSRV>", status=503, ttfb=-1), where, tables)
    assert nosrv is not None and nosrv.revision == "-"
    # without a table of the service every action is "other"
    rec = to_record(req("h1.a"), where, {})
    assert rec is not None and rec.action == "other"


def test_aggregate_counts_per_clock_aligned_interval_and_class() -> None:
    obs, d = world()
    where = origins(obs, d)  # type: ignore[arg-type]
    tables = action_tables(d, {})  # type: ignore[arg-type]
    reqs = [req("h1.a", t=1_700_000_000 + i, total=i) for i in range(20)]
    reqs += [req("h1.a", status=502, t=1_700_000_009), req("h1.b", status=-1, ttfb=-1),
             req("<NOSRV>", status=503, ttfb=-1)]
    recs = [r for r in (to_record(q, where, tables) for q in reqs) if r]
    cells = aggregate(recs)
    a = "GET /orders/{id}"
    assert cells[(1_700_000_000, "web", "v1", a, "2xx")].count == 10
    assert cells[(1_700_000_010, "web", "v1", a, "2xx")].count == 10
    assert cells[(1_700_000_000, "web", "v1", a, "5xx")].count == 1
    assert cells[(1_700_000_000, "web", "v2", a, "err")].count == 1
    assert cells[(1_700_000_000, "web", "-", a, "err")].count == 1
    first = cells[(1_700_000_000, "web", "v1", a, "2xx")]
    assert first.sum_ms == sum(range(10)) and first.total.total == 10
    assert cells[(1_700_000_000, "web", "v2", a, "err")].ttfb.total == 0  # no TTFB
    agg = Aggregator()
    for r in recs:
        agg.add(r)
    taken = agg.take()
    assert {k: c.count for k, c in taken.items()} == {k: c.count for k, c in cells.items()}
    assert agg.take() == {}


def test_action_tables_are_kept_while_the_declaration_holds() -> None:
    _, d = world()
    first = action_tables(d, {})  # type: ignore[arg-type]
    first["web"].name("GET", "/x/1")
    again = action_tables(d, first)  # type: ignore[arg-type]
    assert again["web"] is first["web"]
    svc = replace(d.services[0], max_actions=3)  # type: ignore[attr-defined]
    changed = action_tables(replace(d, services=(svc,)), first)  # type: ignore[type-var]
    assert changed["web"] is not first["web"]


def test_after_marker_takes_the_lines_after_the_last_one_ingested() -> None:
    reqs = [req("h1.a", n=i) for i in (1, 3, 2, 4)]
    assert after_marker(reqs, None) == reqs
    assert after_marker(reqs, (42, 3)) == reqs[2:]
    assert after_marker(reqs, (42, 4)) == []
    assert after_marker(reqs, (7, 3)) == reqs  # another worker: all new
