"""Rank tests: Wilcoxon signed-rank for paired differences, Mann-Whitney U from value
counts (with the probability of superiority)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from shadowproxy.stats.descriptive import require_finite
from shadowproxy.stats.distributions import (
    norm_sf,
)
from shadowproxy.stats.results import (
    MannWhitneyResult,
    TestResult,
    ValueCounts,
)


def average_ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Ranks (1-based, ties averaged) in input order, and the size of every tie group."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties: list[int] = []
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        rank = (start + end) / 2.0 + 1.0
        for position in range(start, end + 1):
            ranks[order[position]] = rank
        ties.append(end - start + 1)
        start = end + 1
    return ranks, ties


def wilcoxon_signed_rank(differences: Sequence[float]) -> TestResult:
    """Two-sided Wilcoxon signed-rank test, normal approximation.

    The variant is ``scipy.stats.wilcoxon(d, zero_method="wilcox", correction=False,
    method="approx")``: zero differences are dropped, tied ranks averaged with the
    variance reduced by ``sum(t^3 - t) / 48``, no continuity correction. The statistic
    is ``min(R+, R-)``. The normal approximation is what a 20,000-pair sample needs;
    the exact distribution matters only below ~50 pairs, where the report says
    "too few" anyway.
    """
    require_finite(differences, "wilcoxon_signed_rank")
    nonzero = [d for d in differences if d != 0.0]
    n = len(nonzero)
    if n == 0:
        return TestResult("Wilcoxon signed-rank", math.nan, math.nan)
    ranks, ties = average_ranks([abs(d) for d in nonzero])
    r_plus = math.fsum(r for r, d in zip(ranks, nonzero, strict=True) if d > 0)
    r_minus = math.fsum(r for r, d in zip(ranks, nonzero, strict=True) if d < 0)
    mean = n * (n + 1) / 4.0
    variance = (n * (n + 1) * (2 * n + 1) - sum(t**3 - t for t in ties) / 2.0) / 24.0
    statistic = min(r_plus, r_minus)
    if variance <= 0.0:
        return TestResult("Wilcoxon signed-rank", statistic, math.nan)
    z = (r_plus - mean) / math.sqrt(variance)
    return TestResult("Wilcoxon signed-rank", statistic, min(1.0, 2.0 * norm_sf(abs(z))))


def mann_whitney_u(a: ValueCounts, b: ValueCounts) -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test of arm A against arm B from value counts.

    The variant is ``scipy.stats.mannwhitneyu(x, y, method="asymptotic",
    use_continuity=True)`` on the expanded values: normal approximation with the tie
    correction, which a 1-5 rating needs (five values, thousands of ties), and a
    continuity correction of 1/2. The statistic is A's U, the number of pairs in which
    A's value is larger plus half the ties; everything is summed over distinct values,
    so a million ratings cost five steps. An empty arm gives NaN; when every value is
    the same there is no evidence of a difference (z = 0, p = 1).
    """
    counts_a, counts_b = _tally(a), _tally(b)
    n1, n2 = sum(counts_a.values()), sum(counts_b.values())
    if n1 == 0 or n2 == 0:
        return MannWhitneyResult("Mann-Whitney U", math.nan, math.nan, math.nan, math.nan)
    twice_u, ties = _twice_u_and_ties(counts_a, counts_b)
    n = n1 + n2
    variance = n1 * n2 * ((n + 1) * n * (n - 1) - ties) / (12 * n * (n - 1))
    excess = abs(twice_u - n1 * n2) / 2.0 - 0.5
    z = 0.0 if variance <= 0.0 or excess <= 0.0 else excess / math.sqrt(variance)
    z = math.copysign(z, twice_u - n1 * n2)
    return MannWhitneyResult(
        "Mann-Whitney U",
        twice_u / 2.0,
        min(1.0, 2.0 * norm_sf(abs(z))),
        z=z,
        superiority=twice_u / (2.0 * n1 * n2),
    )


def _tally(counts: ValueCounts) -> dict[float, int]:
    pairs = counts.items() if isinstance(counts, Mapping) else counts
    tally: dict[float, int] = {}
    for value, count in pairs:
        if count < 0 or math.isnan(value):
            raise ValueError(f"need a number with a count >= 0, got {value!r}: {count!r}")
        tally[value] = tally.get(value, 0) + count
    return tally


def _twice_u_and_ties(a: Mapping[float, int], b: Mapping[float, int]) -> tuple[int, int]:
    """``2 U`` for A (an exact integer: ties count 1/2) and ``sum(t^3 - t)`` over the tie
    groups of the pooled values."""
    twice_u, ties, b_below = 0, 0, 0
    for value in sorted(a.keys() | b.keys()):
        in_a, in_b = a.get(value, 0), b.get(value, 0)
        twice_u += in_a * (2 * b_below + in_b)
        ties += (in_a + in_b) ** 3 - (in_a + in_b)
        b_below += in_b
    return twice_u, ties
