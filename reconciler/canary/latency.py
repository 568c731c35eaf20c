"""Is the canary slower than the baseline? Slow-request counts judged by the same
conditional e-process as errors, for all requests and per action. Pure: times in,
evidence out.

Per look (an interval) and per action, a slowness threshold ``tau`` is fixed *before*
the interval's requests are seen: the baseline's ``quantile`` of its response times in
the earlier intervals (the last ``window`` of them), never below ``min_ms`` (so 0 vs
1 ms of noise on a fast service never counts). In the interval, a baseline request is
slow when it took more than ``tau``; a canary request when it took more than
``max_slowdown * tau``. The null is "the canary's times are stochastically at most
``max_slowdown`` times the baseline's": then P(canary > max_slowdown * tau) <=
P(baseline > tau) for every tau, so the odds ratio of "slow" between the sides is at
most 1. Given the interval's margins (requests per side, slow requests in all), the
canary's slow count follows Fisher's noncentral hypergeometric law with that odds
ratio; the likelihood ratio of a psi > 1 against 1 increases with the count, so its
expectation under any odds ratio <= 1 is at most 1. The product over intervals of the
(mixture over psi of) these ratios is thus a test supermartingale, exactly as for
errors (``decision.EProcess``), and ``tau`` being a function of the past only keeps it
so. The times are HAProxy's whole milliseconds (``%Ta``); the rounding makes the null
inexact by at most 1 ms around ``tau``, which ``min_ms`` keeps small.

One e-process is kept for all requests (key ``ALL``; each request judged against its
own action's threshold when its action has a slot) and one per action, in at most
``action_slots`` slots. An action gets a slot once its baseline has ``min_baseline``
times (so busy actions come first), declared actions before others in the same look;
a slot is kept for good. The latency evidence is
``1/2 E_all + 1/2 * (1/action_slots) * sum of the slots' E_a`` (a slot not yet taken
counts as 1, the value of an e-process that never looked): an average of
e-processes on the same looks with weights fixed in advance is again an e-process, so
the guarantee holds however many actions there are and however often it is looked
at; a regression on one action alone needs ``2 * action_slots`` times the evidence of
a regression everywhere (a few more intervals: evidence grows exponentially).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.canary.evidence import Counts, log_likelihood_ratios

ALL = "*"  # the key of "all requests"


@dataclass(frozen=True)
class LatencySettings:
    """What slower means (see the module doc). ``min_baseline``: baseline times needed
    before a threshold is set; ``window``: times kept per action and side."""

    quantile: float = 0.95
    max_slowdown: float = 1.2
    min_ms: float = 2.0
    min_baseline: int = 20
    window: int = 1000
    action_slots: int = 8


@dataclass(frozen=True)
class Sample:
    """Total times (ms) of one action's requests in one interval, per side."""

    canary: Sequence[int] = ()
    baseline: Sequence[int] = ()


@dataclass
class Track:
    """One key's recent times per side and its e-process's log products per odds ratio."""

    baseline: list[int] = field(default_factory=list)
    canary: list[int] = field(default_factory=list)
    log_products: list[float] = field(default_factory=list)
    slow: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # c req, c slow, b req, b slow

    def value(self) -> float:
        if not self.log_products:
            return 1.0
        top = max(self.log_products)
        mean = sum(math.exp(x - top) for x in self.log_products) / len(self.log_products)
        return math.exp(top) * mean


def quantile(values: Sequence[int], q: float) -> float | None:
    """The q-quantile (0-1) by nearest rank; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return float(ordered[rank])


@dataclass
class LatencyEvidence:
    """The latency e-processes of one canary: ``ALL`` and the slotted actions, plus the
    actions still waiting for enough baseline times to take a slot."""

    settings: LatencySettings
    odds_ratios: tuple[float, ...]
    declared: tuple[str, ...] = ()
    tracks: dict[str, Track] = field(default_factory=dict)
    slots: list[str] = field(default_factory=list)

    def threshold(self, key: str) -> float | None:
        """The slowness threshold of ``key`` for the next interval (None: not enough
        baseline times yet)."""
        t = self.tracks.get(key)
        s = self.settings
        if t is None or len(t.baseline) < s.min_baseline:
            return None
        q = quantile(t.baseline, s.quantile)
        assert q is not None
        return max(q, s.min_ms)

    def observe(self, samples: Mapping[str, Sample]) -> None:
        """Feed one interval: ``samples`` per action. Every threshold is taken before
        any of the interval's times is added."""
        top = self.threshold(ALL)
        taus = {n: self.threshold(n) if n in self.slots else None for n in samples}
        if top is not None:
            # All requests, each against its own action's threshold when its action has
            # a slot (else the threshold of all requests): every request's slowness is
            # still judged on a threshold fixed before the interval, and an action
            # slower than the others cannot hide the rest behind its tail.
            counts = [self._slow(samples[n], taus[n] or top) for n in samples]
            self._feed(ALL, (_sum(c for c, _ in counts), _sum(b for _, b in counts)))
        self._keep(
            ALL,
            Sample(
                [x for v in samples.values() for x in v.canary],
                [x for v in samples.values() for x in v.baseline],
            ),
        )
        for name in sorted(samples, key=lambda n: (n not in self.declared, n)):
            tau = taus[name]
            if tau is not None:
                self._feed(name, self._slow(samples[name], tau))
            if name in self.slots or len(self.slots) < self.settings.action_slots:
                self._keep(name, samples[name])
        # A waiting action takes a slot once it has a threshold; slots are for good.
        for name in sorted(self.tracks, key=lambda n: (n not in self.declared, n)):
            full = len(self.slots) >= self.settings.action_slots
            waiting = name != ALL and name not in self.slots and not full
            if waiting and self.threshold(name) is not None:
                self.slots.append(name)
        for name in [n for n in self.tracks if n != ALL and n not in self.slots]:
            if len(self.slots) >= self.settings.action_slots:
                del self.tracks[name]  # no slot left: its times are not needed

    def _slow(self, sample: Sample, tau: float) -> tuple[Counts, Counts]:
        """(canary, baseline) requests and slow requests of ``sample`` against ``tau``."""
        slow_c = sum(x > self.settings.max_slowdown * tau for x in sample.canary)
        slow_b = sum(x > tau for x in sample.baseline)
        return Counts(len(sample.canary), slow_c), Counts(len(sample.baseline), slow_b)

    def _track(self, key: str) -> Track:
        return self.tracks.setdefault(key, Track(log_products=[0.0] * len(self.odds_ratios)))

    def _feed(self, key: str, counts: tuple[Counts, Counts]) -> None:
        c, b = counts
        track = self._track(key)
        ratios = log_likelihood_ratios(c, b, self.odds_ratios)
        track.log_products = [a + r for a, r in zip(track.log_products, ratios, strict=True)]
        for i, n in enumerate((c.requests, c.errors, b.requests, b.errors)):
            track.slow[i] += n

    def _keep(self, key: str, sample: Sample) -> None:
        track, w = self._track(key), self.settings.window
        track.baseline = (track.baseline + list(sample.baseline))[-w:]
        track.canary = (track.canary + list(sample.canary))[-w:]

    def all_value(self) -> float:
        """The evidence of all requests together."""
        return self.tracks[ALL].value() if ALL in self.tracks else 1.0

    def value(self) -> float:
        """The latency evidence (module doc): 1 at the start."""
        all_ = self.all_value()
        k = self.settings.action_slots
        used = [self.tracks[n].value() for n in self.slots if n in self.tracks]
        per_action = (sum(used) + (k - len(used))) / k if k else 1.0
        return 0.5 * all_ + 0.5 * per_action

    def action_values(self) -> dict[str, float]:
        """Each slotted action's own evidence."""
        return {n: self.tracks[n].value() for n in self.slots if n in self.tracks}

    def describe(self, key: str) -> str:
        """``p95 12 ms vs 1 ms`` for ``key``: the canary's and the baseline's times at
        the settings' quantile over the kept window."""
        t = self.tracks.get(key, Track())
        label = f"p{self.settings.quantile * 100:g}"
        return f"{label} {_ms(quantile(t.canary, self.settings.quantile))} vs " + _ms(
            quantile(t.baseline, self.settings.quantile)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "slots": list(self.slots),
            "tracks": {
                k: {"b": t.baseline, "c": t.canary, "log": t.log_products, "slow": t.slow}
                for k, t in self.tracks.items()
            },
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Restore what ``to_dict`` gave (tracks of another odds-ratio grid restart)."""
        self.slots = [str(x) for x in data.get("slots", [])][: self.settings.action_slots]
        for key, t in data.get("tracks", {}).items():
            log = [float(x) for x in t["log"]]
            if len(log) != len(self.odds_ratios):
                log = [0.0] * len(self.odds_ratios)
            w = self.settings.window
            self.tracks[str(key)] = Track(
                [int(x) for x in t["b"]][-w:],
                [int(x) for x in t["c"]][-w:],
                log,
                [int(x) for x in t.get("slow", [0, 0, 0, 0])],
            )


def _sum(counts: Iterable[Counts]) -> Counts:
    total = list(counts)
    return Counts(sum(c.requests for c in total), sum(c.errors for c in total))


def _ms(value: float | None) -> str:
    if value is None:
        return "- ms"
    return f"{value:.3g} ms"
