"""A mergeable latency histogram with fixed, log-spaced bucket bounds (milliseconds).

Every histogram has the same bounds: bucket 0 holds [0, 0.5 ms], bucket i (1..68) holds
(BOUNDS[i-1], BOUNDS[i]] with BOUNDS[i] = 0.5 * 2**(i/4) (four buckets per doubling, so
a bucket is at most 19% wider than its lower edge) up to 65.5 s, and one overflow
bucket holds anything slower. Because the bounds are fixed, two histograms merge by
adding their counts: ``merge(a, b)`` equals the histogram of both sets of values.

``quantile`` interpolates linearly within the bucket holding the wanted rank, so its
answer lies in the same bucket as the true value: the error is at most one bucket's
width (an overflow answer is the last bound). Pure; no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from operator import add

PER_DOUBLING = 4
FIRST_MS = 0.5
LAST_INDEX = 68  # FIRST_MS * 2**(68/4) = 65,536 ms
BOUNDS: tuple[float, ...] = tuple(
    FIRST_MS * 2 ** (i / PER_DOUBLING) for i in range(LAST_INDEX + 1)
)
SIZE = len(BOUNDS) + 1  # the last bucket: slower than BOUNDS[-1] (overflow)

# Prometheus' buckets (seconds): one bound per doubling, a subset of BOUNDS, so a
# quantile from PromQL's histogram_quantile and one from the store land in the same
# Prometheus bucket (reconciler.present.metrics).
PROMETHEUS_BUCKETS_S: tuple[float, ...] = tuple(
    BOUNDS[i] / 1000 for i in range(0, LAST_INDEX + 1, PER_DOUBLING)
)


def bucket_of(ms: float) -> int:
    """The index of the bucket holding ``ms`` (negative values count as 0)."""
    return bisect.bisect_left(BOUNDS, ms) if ms > 0 else 0


def bucket_range(index: int) -> tuple[float, float]:
    """(lower, upper) edge of bucket ``index``; the overflow bucket is (last bound,
    last bound): nothing is known of its values but that they are slower."""
    if index <= 0:
        return 0.0, BOUNDS[0]
    if index >= len(BOUNDS):
        return BOUNDS[-1], BOUNDS[-1]
    return BOUNDS[index - 1], BOUNDS[index]


class Histogram:
    """Counts per bucket (see the module doc). Not thread-safe: its owner locks."""

    __slots__ = ("counts",)

    def __init__(self, counts: Sequence[int] | None = None, own: bool = False) -> None:
        """``own``: ``counts`` is a list the caller hands over (not copied)."""
        if counts is not None and len(counts) != SIZE:
            raise ValueError(f"a histogram has {SIZE} buckets, not {len(counts)}")
        if counts is None:
            self.counts: list[int] = [0] * SIZE
        else:
            self.counts = counts if own and isinstance(counts, list) else list(counts)

    @classmethod
    def of(cls, values: Iterable[float]) -> Histogram:
        h = cls()
        for v in values:
            h.add(v)
        return h

    @property
    def total(self) -> int:
        return sum(self.counts)

    def add(self, ms: float, n: int = 1) -> None:
        self.counts[bucket_of(ms)] += n

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s counts into this histogram; returns self."""
        self.counts = list(map(add, self.counts, other.counts))  # C speed
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Histogram) and self.counts == other.counts

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    def __repr__(self) -> str:
        return f"Histogram({dict((i, c) for i, c in enumerate(self.counts) if c)})"

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0-1) in ms, interpolated within its bucket; None when
        empty. Lies in the bucket of the true nearest-rank quantile."""
        total = self.total
        if total == 0:
            return None
        rank = min(max(q, 0.0), 1.0) * total
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                lo, hi = bucket_range(i)
                inside = max(0.0, rank - seen) / c
                return lo + (hi - lo) * inside
            seen += c
        return BOUNDS[-1]  # rounding: every count was below the rank

    # ------------------------------------------------------------ serialisation

    def to_bytes(self) -> bytes:
        """Compact form, the shorter of two (b"" when empty). Sparse: per non-empty
        bucket its index (one byte) and its count as an unsigned LEB128 varint. Dense:
        ``DENSE`` (no bucket has that index), the first and last non-empty bucket, then
        the count of every bucket from the one to the other (zeros too): shorter when
        the non-empty buckets are mostly adjacent, as latencies are."""
        counts = self.counts
        used = [i for i, c in enumerate(counts) if c]
        if not used:
            return b""
        lo, hi = used[0], used[-1]
        sparse = bytearray()
        dense = bytearray((DENSE, lo, hi))
        for i in used:
            sparse.append(i)
            _varint(sparse, counts[i])
        for i in range(lo, hi + 1):
            _varint(dense, counts[i])
        return bytes(dense if len(dense) < len(sparse) else sparse)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> Histogram:
        """The inverse of ``to_bytes``; ValueError on a malformed blob."""
        h = cls()
        if not data:
            return h
        if data[0] == DENSE:
            if len(data) < 3 or not data[1] <= data[2] < SIZE:
                raise ValueError("malformed histogram")
            pos, index = 3, data[1]
            while index <= data[2]:
                value, pos = _read_varint(data, pos)
                h.counts[index] = value
                index += 1
            if pos != len(data):
                raise ValueError("malformed histogram")
            return h
        pos, n = 0, len(data)
        while pos < n:
            index = data[pos]
            if index >= SIZE:
                raise ValueError(f"histogram bucket {index} out of range")
            value, pos = _read_varint(data, pos + 1)
            h.counts[index] += value
        return h


DENSE = 0xFF  # the first byte of the dense form


def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); ValueError when ``data`` ends inside it."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated histogram")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def merge_bytes(a: bytes | None, b: bytes | None) -> bytes:
    """Two serialised histograms merged, serialised (the store's SQL merge function)."""
    if not a:
        return b or b""
    if not b:
        return a
    return Histogram.from_bytes(a).merge(Histogram.from_bytes(b)).to_bytes()
