"""Per-revision deltas from HAProxy's per-server counters, across reloads and resets."""

from __future__ import annotations

from reconciler.canary.decision import Counts
from reconciler.canary.measure import Meter
from reconciler.model import ServerStats

REV = {("be_web", "h1.a"): "v1", ("be_web", "h1.b"): "v1", ("be_web", "h1.c"): "v2"}


def stat(server: str, ok: int, err5: int = 0, eresp: int = 0, econ: int = 0) -> ServerStats:
    return ServerStats(
        "be_web", server, "UP", 1, 0, ok + err5,
        hrsp_2xx=ok, hrsp_5xx=err5, eresp=eresp, econ=econ,
    )


def test_first_reading_sets_the_start_then_deltas_are_summed_per_revision() -> None:
    m = Meter()
    assert m.update("lb", "g1", [stat("h1.a", 100), stat("h1.c", 5)], REV) == {
        ("be_web", "v1"): Counts(0, 0), ("be_web", "v2"): Counts(0, 0)
    }
    got = m.update(
        "lb", "g1", [stat("h1.a", 150, 2), stat("h1.b", 10), stat("h1.c", 9, 1, eresp=1)], REV
    )
    # h1.b appeared: all it counted is new. eresp counts as a request and an error.
    assert got == {("be_web", "v1"): Counts(62, 2), ("be_web", "v2"): Counts(6, 2)}


def test_reload_and_reset_count_from_zero() -> None:
    m = Meter()
    m.update("lb", "g1", [stat("h1.a", 100)], REV)
    # A new worker (generation): its counts are all new, even when above the old ones.
    assert m.update("lb", "g2", [stat("h1.a", 120)], REV) == {("be_web", "v1"): Counts(120, 0)}
    # Same generation, counters went down (e.g. cleared): counted from zero again.
    assert m.update("lb", "g2", [stat("h1.a", 7, 1)], REV) == {("be_web", "v1"): Counts(8, 1)}


def test_unknown_servers_are_skipped_and_state_survives_json() -> None:
    m = Meter()
    m.update("lb", "g1", [stat("h1.a", 10), stat("other", 99)], REV)
    again = Meter.from_json(m.to_json())
    assert again.update("lb", "g1", [stat("h1.a", 15), stat("other", 500)], REV) == {
        ("be_web", "v1"): Counts(5, 0)
    }


def test_4xx_are_errors_only_when_the_analysis_counts_them() -> None:
    def with_4xx(ok: int, err4: int) -> ServerStats:
        return ServerStats("be_web", "h1.c", "UP", 1, 0, ok + err4, hrsp_2xx=ok, hrsp_4xx=err4)

    m = Meter()
    m.update("lb", "g1", [with_4xx(0, 0)], REV)
    assert m.update("lb", "g1", [with_4xx(10, 5)], REV) == {("be_web", "v2"): Counts(15, 0)}
    assert m.update("lb", "g1", [with_4xx(20, 8)], REV, errors_4xx=True) == {
        ("be_web", "v2"): Counts(13, 3)
    }
    # A state saved before 4xx were kept (5 fields a server) loads; its 4xx start there.
    old = '{"last": [["lb", "be_web", "h1.c", 28, 0]], "generation": {"lb": "g1"}}'
    assert Meter.from_json(old).update("lb", "g1", [with_4xx(22, 9)], REV, errors_4xx=True) == {
        ("be_web", "v2"): Counts(3, 0)
    }
