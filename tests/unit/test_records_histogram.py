"""The latency histogram: bounds, quantiles within a bucket, merge, serialisation."""

from __future__ import annotations

import itertools
import random

import pytest

from reconciler.records.histogram import (
    BOUNDS,
    DENSE,
    PROMETHEUS_BUCKETS_S,
    SIZE,
    Histogram,
    bucket_of,
    bucket_range,
    merge_bytes,
)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def test_bounds_are_four_per_doubling_from_half_a_millisecond_past_a_minute() -> None:
    assert BOUNDS[0] == 0.5 and BOUNDS[4] == 1.0 and BOUNDS[-1] == 65536.0
    assert all(b / a == pytest.approx(2 ** 0.25) for a, b in itertools.pairwise(BOUNDS))
    assert bucket_of(0) == 0 and bucket_of(-1) == 0 and bucket_of(0.5) == 0
    assert bucket_of(0.51) == 1 and bucket_of(1) == 4 and bucket_of(10**9) == SIZE - 1
    for i in range(SIZE):
        lo, hi = bucket_range(i)
        assert lo <= hi


def test_prometheus_buckets_are_a_subset_of_the_bounds() -> None:
    assert {round(b * 1000, 9) for b in PROMETHEUS_BUCKETS_S} <= {round(b, 9) for b in BOUNDS}
    assert PROMETHEUS_BUCKETS_S[0] == 0.0005 and len(PROMETHEUS_BUCKETS_S) == 18


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("q", [0.01, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_quantile_lies_in_the_bucket_of_the_true_quantile(seed: int, q: float) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(rng.uniform(0, 6), rng.uniform(0.1, 2)) for _ in range(1 + seed * 50)]
    values += [float(rng.randrange(0, 50)) for _ in range(seed * 10)]  # whole ms, as HAProxy logs
    h = Histogram.of(values)
    truth = nearest_rank(values, q)
    lo, hi = bucket_range(bucket_of(truth))
    got = h.quantile(q)
    assert got is not None
    assert lo <= got <= hi, (got, truth, lo, hi)
    assert abs(got - truth) <= hi - lo


def test_empty_histogram_has_no_quantile_and_overflow_reads_as_the_last_bound() -> None:
    assert Histogram().quantile(0.5) is None
    assert Histogram.of([10**7]).quantile(0.99) == BOUNDS[-1]


@pytest.mark.parametrize("seed", range(10))
def test_merge_equals_the_histogram_of_the_concatenation(seed: int) -> None:
    rng = random.Random(seed)
    a = [rng.expovariate(0.01) for _ in range(rng.randrange(0, 500))]
    b = [rng.expovariate(0.1) for _ in range(rng.randrange(0, 500))]
    assert Histogram.of(a).merge(Histogram.of(b)) == Histogram.of(a + b)
    merged = merge_bytes(Histogram.of(a).to_bytes(), Histogram.of(b).to_bytes())
    assert Histogram.from_bytes(merged) == Histogram.of(a + b)


def test_serialisation_round_trips_and_is_compact() -> None:
    h = Histogram.of([1, 1, 2, 3, 100, 100000])
    h.add(5, n=300)  # a count over one varint byte
    data = h.to_bytes()
    assert Histogram.from_bytes(data) == h
    assert len(data) <= 2 * 6 + 1
    assert Histogram().to_bytes() == b"" and Histogram.from_bytes(b"") == Histogram()
    with pytest.raises(ValueError):
        Histogram.from_bytes(bytes([3, 0x80]))
    with pytest.raises(ValueError):
        Histogram.from_bytes(bytes([SIZE, 1]))


@pytest.mark.parametrize("seed", range(20))
def test_the_shorter_form_round_trips(seed: int) -> None:
    rng = random.Random(seed)
    h = Histogram.of(rng.expovariate(1 / rng.choice([1, 20, 500]))
                     for _ in range(rng.randrange(1, 3000)))
    if seed % 2:
        h.add(100_000, n=rng.randrange(1, 5))  # far away: sparse wins
    data = h.to_bytes()
    assert Histogram.from_bytes(data) == h
    used = [i for i, c in enumerate(h.counts) if c]
    width = used[-1] - used[0] + 1
    if width == len(used) and len(used) >= 4:  # adjacent buckets: the dense form, shorter
        assert data[0] == DENSE and len(data) < len(used) * 2
    assert len(data) <= sum(1 + (c.bit_length() + 6) // 7 for c in h.counts if c)


def test_a_malformed_dense_blob_is_refused() -> None:
    good = Histogram([0] * 3 + [5] * 6 + [0] * (SIZE - 9)).to_bytes()
    assert good[0] == DENSE
    for bad in (good[:-1], good + b"\x01", bytes([DENSE, 5, 2, 1]), bytes([DENSE, 1])):
        with pytest.raises(ValueError):
            Histogram.from_bytes(bad)
