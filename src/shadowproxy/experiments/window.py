"""What a canary step has observed so far: counts and latencies per side, bounded in memory.

The proxy records every answer of a canary route into the current ``Window`` (one
``record`` call: a few integer increments and one ``log``) and hands the window to
``Canary.evaluate`` from time to time. Memory does not grow with traffic: latencies go
into a ``LatencyHistogram`` of fixed log-spaced buckets, from which quantiles come with
conservative confidence bounds. Windows merge (one per worker process) and round-trip
through plain dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from shadowproxy.stats import binom_cdf

Side = Literal["candidate", "production"]

FIRST_EDGE_MS = 0.1
"""Bucket 0 holds [0, 0.1 ms); below that, latency differences do not matter."""
GROWTH = 2.0 ** (1.0 / 16.0)
"""Each bucket is 4.4% wider than the one before: the relative resolution of a quantile."""
BUCKETS = 404
"""Bucket 403, the last, holds everything from about an hour up."""
_LOG_GROWTH = math.log(GROWTH)


def bucket_index(ms: float) -> int:
    """The bucket a latency falls in (negative and NaN latencies count as 0)."""
    if not ms >= FIRST_EDGE_MS:
        return 0
    index = 1 + int(math.log(ms / FIRST_EDGE_MS) / _LOG_GROWTH)
    return min(index, BUCKETS - 1)


def bucket_bounds(index: int) -> tuple[float, float]:
    """[lower, upper) of a bucket in ms; the last bucket's upper edge is infinite."""
    lower = 0.0 if index == 0 else FIRST_EDGE_MS * GROWTH ** (index - 1)
    upper = math.inf if index == BUCKETS - 1 else FIRST_EDGE_MS * GROWTH**index
    return lower, upper


def quantile_rank_bounds(n: int, q: float, level: float) -> tuple[int, int]:
    """Ranks (1-based) of the order statistics that bound the q-quantile of the
    population, each one-sided at ``level``, without assuming a distribution.

    ``X(l) <= xi_q`` exactly when at least l of the n draws fall at or below xi_q, which
    has probability ``P(Binomial(n, q) >= l)``; the lower rank is the largest l for which
    that is at least ``level``. Symmetrically ``X(u) >= xi_q`` has probability
    ``P(Binomial(n, q) <= u - 1)`` and the upper rank is the smallest u reaching it.
    A lower rank of 0 or an upper rank of n + 1 means the sample is too small to bound
    the quantile on that side.
    """
    if n <= 0:
        return 0, 1
    alpha = 1.0 - level
    # Largest k with P(B <= k) <= alpha; the lower rank is k + 1.
    low, high = -1, n - 1
    while low < high:
        middle = (low + high + 1) // 2
        if binom_cdf(middle, n, q) <= alpha:
            low = middle
        else:
            high = middle - 1
    lower_rank = low + 1
    # Smallest k with P(B <= k) >= level; the upper rank is k + 1.
    low, high = 0, n
    while low < high:
        middle = (low + high) // 2
        if binom_cdf(middle, n, q) >= level:
            high = middle
        else:
            low = middle + 1
    return lower_rank, low + 1


@dataclass(slots=True)
class LatencyHistogram:
    """Counts of latencies per fixed log-spaced bucket (at most ``BUCKETS`` entries).

    A quantile is known only to its bucket, so bounds use bucket edges: the lower bound
    is the lower edge of the bucket holding the lower order statistic, the upper bound
    the upper edge of the bucket holding the upper one. Coarseness makes the bounds
    wider, never wrong.
    """

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0

    def add(self, ms: float) -> None:
        index = bucket_index(ms)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.count += 1

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        merged = dict(self.counts)
        for index, count in other.counts.items():
            merged[index] = merged.get(index, 0) + count
        return LatencyHistogram(merged, self.count + other.count)

    def bucket_of_rank(self, rank: int) -> int:
        """The bucket holding the ``rank``-th smallest latency (1-based)."""
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return index
        raise ValueError(f"rank {rank} is beyond the {self.count} latencies recorded")

    def quantile(self, q: float) -> float:
        """Point estimate: the geometric middle of the bucket holding rank ceil(q n)."""
        if self.count == 0:
            return math.nan
        lower, upper = bucket_bounds(self.bucket_of_rank(max(1, math.ceil(q * self.count))))
        if lower == 0.0 or math.isinf(upper):
            return upper if lower == 0.0 else lower
        return math.sqrt(lower * upper)

    def quantile_bounds(self, q: float, level: float) -> tuple[float, float]:
        """(lower, upper) bounds of the population q-quantile in ms, each one-sided at
        ``level``; 0 and inf where the sample is too small to say anything."""
        lower_rank, upper_rank = quantile_rank_bounds(self.count, q, level)
        lower = 0.0 if lower_rank < 1 else bucket_bounds(self.bucket_of_rank(lower_rank))[0]
        if upper_rank > self.count:
            return lower, math.inf
        return lower, bucket_bounds(self.bucket_of_rank(upper_rank))[1]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": {str(index): count for index, count in sorted(self.counts.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        counts = {int(index): int(count) for index, count in data["counts"].items()}
        if any(not 0 <= index < BUCKETS or count < 0 for index, count in counts.items()):
            raise ValueError("latency histogram: bucket index or count out of range")
        return cls(counts, sum(counts.values()))


@dataclass(slots=True)
class SideStats:
    """One side's answers in the window: how many, how many failed, how fast."""

    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def merge(self, other: SideStats) -> SideStats:
        return SideStats(
            self.requests + other.requests,
            self.errors + other.errors,
            self.latency.merge(other.latency),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "latency": self.latency.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SideStats:
        return cls(
            int(data["requests"]), int(data["errors"]), LatencyHistogram.from_dict(data["latency"])
        )


@dataclass(slots=True)
class Window:
    """Everything observed since the canary last changed its share (its ``epoch``).

    ``record`` takes every answer the client got on a canary route: ``candidate`` when
    the candidate answered, ``production`` otherwise. What counts as an error is the
    caller's rule (an upstream failure or a 5xx), applied the same way to both sides.
    ``record_comparison`` takes the sampled comparisons of a candidate answer with a
    shadow call to production, ``record_comparisons`` many at once; incomparable pairs
    are not recorded.
    """

    epoch: int
    candidate: SideStats = field(default_factory=SideStats)
    production: SideStats = field(default_factory=SideStats)
    compared: int = 0
    disagreed: int = 0

    def side(self, side: Side) -> SideStats:
        return self.candidate if side == "candidate" else self.production

    def record(self, side: Side, *, error: bool, latency_ms: float | None = None) -> None:
        stats = self.side(side)
        stats.requests += 1
        stats.errors += error
        if latency_ms is not None:
            stats.latency.add(latency_ms)

    def record_comparison(self, *, agree: bool) -> None:
        self.compared += 1
        self.disagreed += not agree

    def record_comparisons(self, agreed: int, disagreed: int) -> None:
        if agreed < 0 or disagreed < 0:
            raise ValueError(f"counts cannot be negative, got {agreed} and {disagreed}")
        self.compared += agreed + disagreed
        self.disagreed += disagreed

    def merge(self, other: Window) -> Window:
        if other.epoch != self.epoch:
            raise ValueError(f"cannot merge windows of epochs {self.epoch} and {other.epoch}")
        return Window(
            self.epoch,
            self.candidate.merge(other.candidate),
            self.production.merge(other.production),
            self.compared + other.compared,
            self.disagreed + other.disagreed,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "candidate": self.candidate.to_dict(),
            "production": self.production.to_dict(),
            "compared": self.compared,
            "disagreed": self.disagreed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        return cls(
            int(data["epoch"]),
            SideStats.from_dict(data["candidate"]),
            SideStats.from_dict(data["production"]),
            int(data["compared"]),
            int(data["disagreed"]),
        )
