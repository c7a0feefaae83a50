"""The window: bounded latency histogram, distribution-free quantile bounds (checked
against scipy and by coverage), merging across workers and the dict round trip."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from shadowproxy.experiments.window import (
    BUCKETS,
    LatencyHistogram,
    Side,
    Window,
    bucket_bounds,
    bucket_index,
    quantile_rank_bounds,
)


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False))
def test_every_latency_lies_in_its_bucket(ms: float) -> None:
    lower, upper = bucket_bounds(bucket_index(ms))
    assert lower * (1 - 1e-12) <= ms < upper * (1 + 1e-12)


def test_bucket_edges() -> None:
    assert bucket_index(0.0) == bucket_index(-1.0) == bucket_index(math.nan) == 0
    assert bucket_index(1e12) == BUCKETS - 1 and bucket_bounds(BUCKETS - 1)[1] == math.inf
    assert bucket_bounds(BUCKETS - 1)[0] > 3.6e6  # the open-ended bucket starts past an hour
    lower, upper = bucket_bounds(bucket_index(100.0))
    assert upper / lower == pytest.approx(2 ** (1 / 16))


@pytest.mark.parametrize(
    ("n", "q", "level"), [(1000, 0.99, 0.975), (250, 0.99, 0.95), (5000, 0.5, 0.9), (37, 0.9, 0.99)]
)
def test_quantile_ranks_match_the_binomial(n: int, q: float, level: float) -> None:
    lower, upper = quantile_rank_bounds(n, q, level)
    # X(l) <= xi_q with probability P(B >= l): at least `level` for l, not for l + 1.
    assert scipy_stats.binom.sf(lower - 1, n, q) >= level > scipy_stats.binom.sf(lower, n, q)
    # X(u) >= xi_q with probability P(B <= u - 1): at least `level` for u, not for u - 1.
    if upper <= n:
        assert (
            scipy_stats.binom.cdf(upper - 1, n, q) >= level > scipy_stats.binom.cdf(upper - 2, n, q)
        )


def test_too_few_latencies_to_bound_a_p99() -> None:
    assert quantile_rank_bounds(0, 0.99, 0.975) == (0, 1)
    assert quantile_rank_bounds(50, 0.99, 0.975) == (48, 51)  # no upper bound from 50 draws
    histogram = LatencyHistogram()
    for ms in range(1, 51):
        histogram.add(float(ms))
    lower, upper = histogram.quantile_bounds(0.99, 0.975)
    assert 40 < lower <= 48 and upper == math.inf


def test_quantile_bounds_cover_the_true_p99() -> None:
    """Exponential latencies (mean 20 ms): each one-sided bound holds in at least ~97.5%
    of samples; bucket edges only make them more conservative."""
    true_p99 = -20.0 * math.log(0.01)
    rng = random.Random(11)
    misses_low = misses_high = 0
    trials = 300
    for _ in range(trials):
        histogram = LatencyHistogram()
        for _ in range(600):
            histogram.add(rng.expovariate(1 / 20))
        lower, upper = histogram.quantile_bounds(0.99, 0.975)
        misses_low += lower > true_p99
        misses_high += upper < true_p99
    assert misses_low <= 0.025 * trials + 5 and misses_high <= 0.025 * trials + 5


def test_point_estimate_is_within_one_bucket() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 1001):
        histogram.add(float(ms))
    assert histogram.quantile(0.99) == pytest.approx(990, rel=0.05)
    assert math.isnan(LatencyHistogram().quantile(0.99))
    assert (
        histogram.quantile_bounds(0.99, 0.975)[0]
        <= 990
        <= histogram.quantile_bounds(0.99, 0.975)[1]
    )


def test_memory_is_bounded() -> None:
    histogram = LatencyHistogram()
    rng = random.Random(2)
    for _ in range(50_000):
        histogram.add(rng.lognormvariate(3, 3))
    assert histogram.count == 50_000 and len(histogram.counts) <= BUCKETS


def filled(epoch: int, seed: int) -> Window:
    rng = random.Random(seed)
    window = Window(epoch)
    for _ in range(300):
        side: Side = "candidate" if rng.random() < 0.2 else "production"
        window.record(side, error=rng.random() < 0.05, latency_ms=rng.uniform(1, 100))
        if side == "candidate" and rng.random() < 0.5:
            window.record_comparison(agree=rng.random() < 0.9)
    window.record("production", error=False)  # an answer without a latency still counts
    return window


def test_windows_merge_and_round_trip() -> None:
    a, b = filled(3, 1), filled(3, 2)
    merged = a.merge(b)
    assert merged.candidate.requests == a.candidate.requests + b.candidate.requests
    assert merged.production.errors == a.production.errors + b.production.errors
    assert merged.production.latency.count == merged.production.requests - 2
    assert (
        merged.compared == a.compared + b.compared and merged.disagreed == a.disagreed + b.disagreed
    )
    assert Window.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged
    with pytest.raises(ValueError, match="epochs 3 and 4"):
        a.merge(filled(4, 1))


def test_a_corrupt_histogram_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        LatencyHistogram.from_dict({"counts": {str(BUCKETS): 1}})


def test_comparisons_one_at_a_time_or_in_bulk_count_the_same() -> None:
    one, bulk = Window(0), Window(0)
    for agree in (True, True, False, True, False):
        one.record_comparison(agree=agree)
    bulk.record_comparisons(2, 1)
    bulk.record_comparisons(1, 1)
    bulk.record_comparisons(0, 0)
    assert (one.compared, one.disagreed) == (bulk.compared, bulk.disagreed) == (5, 2)
    with pytest.raises(ValueError, match="cannot be negative"):
        bulk.record_comparisons(-1, 0)
    assert (bulk.compared, bulk.disagreed) == (5, 2)
