"""The statistics behind the report, as pure functions over plain numbers.

Nothing here touches files, DuckDB or the clock, and nothing needs scipy or numpy at
run time (scipy is a dev dependency: the tests check every p-value against it). The
report only ever hands these functions aggregated counts or a capped sample, so pure
Python is fast enough.

Conventions: ``alternative="greater"`` means "the first proportion is larger";
p-values of two-sided tests are capped at 1; every function is deterministic
(bootstrap resampling takes a seed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

Alternative = Literal["two-sided", "greater", "less"]

_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class TestResult:
    """A test's name, statistic and p-value, as the report and summary.json show them."""

    name: str
    statistic: float
    p_value: float


# --- the normal distribution ---------------------------------------------------------


def norm_sf(z: float) -> float:
    """P(Z > z) via ``erfc``: ``1 - cdf`` would lose every digit in the far tail."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def norm_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def norm_ppf(q: float) -> float:
    return _NORMAL.inv_cdf(q)


def z_for(confidence: float) -> float:
    """The two-sided critical value, 1.96 for 95%."""
    return norm_ppf(0.5 + confidence / 2.0)


# --- proportions ---------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval: unlike the Wald interval it stays inside [0, 1] and keeps
    its coverage at rates near 0 or 1 (a shadow agreeing 99.9% of the time)."""
    if n <= 0:
        return (math.nan, math.nan)
    z = z_for(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_z(
    x1: int, n1: int, x2: int, n2: int, alternative: Alternative = "two-sided"
) -> TestResult:
    """Pooled two-proportion z test of p1 = x1/n1 against p2 = x2/n2."""
    if n1 <= 0 or n2 <= 0:
        return TestResult("two-proportion z", math.nan, math.nan)
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    diff = x1 / n1 - x2 / n2
    if se == 0.0:
        # Both samples all-0 or all-1: no evidence of any difference.
        return TestResult("two-proportion z", 0.0, 1.0)
    z = diff / se
    return TestResult("two-proportion z", z, _z_p_value(z, alternative))


def _z_p_value(z: float, alternative: Alternative) -> float:
    if alternative == "greater":
        return norm_sf(z)
    if alternative == "less":
        return norm_cdf(z)
    return min(1.0, 2.0 * norm_sf(abs(z)))


def binom_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space from the mode outwards.

    ``math.comb`` on the exact integers would be exact but quadratic in n; a label set
    of a million requests needs the recurrence ``pmf(i-1) = pmf(i) * i q / ((n-i+1) p)``
    started from ``lgamma`` at ``k``, stopping once terms no longer change the sum.
    """
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    if k > n * p:
        # Upper side of the mode: the complement is the shorter, accurate sum.
        return 1.0 - _binom_upper_tail(k + 1, n, p)
    log_pmf = _log_pmf(k, n, p)
    ratio = (1.0 - p) / p
    term, total = 1.0, 1.0
    for i in range(k, 0, -1):
        term *= i * ratio / (n - i + 1)
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, math.exp(log_pmf) * total)


def _binom_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for k above the mode, summed upwards from ``k``."""
    log_pmf = _log_pmf(k, n, p)
    ratio = p / (1.0 - p)
    term, total = 1.0, 1.0
    for i in range(k, n):
        term *= (n - i) * ratio / (i + 1)
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, math.exp(log_pmf) * total)


def _log_pmf(k: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def mcnemar_exact(b: int, c: int) -> TestResult:
    """Exact McNemar test: the discordant pairs split as Binomial(b + c, 1/2) under H0.

    ``b`` = production right and shadow wrong, ``c`` = the reverse. The p-value is the
    two-sided binomial test, equal to ``scipy.stats.binomtest(min(b, c), b + c).pvalue``.
    """
    n = b + c
    if n == 0:
        return TestResult("McNemar exact", 0.0, 1.0)
    k = min(b, c)
    p = 1.0 if 2 * k == n else min(1.0, 2.0 * binom_cdf(k, n, 0.5))
    return TestResult("McNemar exact", float(k), p)


def paired_proportion_diff_ci(
    b: int, c: int, n: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Wald interval for the paired difference (c - b) / n in accuracy (shadow minus
    production). Adequate at the sample sizes where the verdict quotes it."""
    if n <= 0:
        return (math.nan, math.nan)
    diff = (c - b) / n
    variance = ((b + c) / n - diff * diff) / n
    half = z_for(confidence) * math.sqrt(max(variance, 0.0))
    return (diff - half, diff + half)


# --- Wilcoxon signed-rank ------------------------------------------------------------


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


# --- bootstrap -----------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[Sequence[float]], float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic``, reproducible through ``seed``.

    Percentile rather than BCa: the report's statistics (a median, a mean difference)
    are close to symmetric at the sample sizes it uses, and the percentile method
    needs no jackknife pass over the data.
    """
    if len(values) < 2:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    data = list(values)
    estimates = sorted(statistic(rng.choices(data, k=len(data))) for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    return (_percentile(estimates, tail), _percentile(estimates, 1.0 - tail))


def bootstrap_median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the median, computed exactly instead of by
    resampling: with infinitely many resamples the answer would be the same.

    For odd n the resampled median is the m-th order statistic (m = (n + 1) / 2) of n
    draws, and it is at most ``x[j]`` exactly when at least m draws are, which is a
    binomial tail: ``P(median* <= x[j]) = P(Binomial(n, c_j / n) >= m)`` with ``c_j``
    the number of values at most ``x[j]``. The quantiles of that distribution are
    found by bisection. An even-sized sample drops its last value first (the report's
    samples are in random hash order), so that the median is one order statistic.
    That makes it exact, free of resampling noise, and milliseconds on 20,000 values
    where a pure-Python resampling loop takes seconds.
    """
    data = list(values)
    if len(data) % 2 == 0:
        data = data[:-1]
    n = len(data)
    if n < 3:
        return (math.nan, math.nan)
    ordered = sorted(data)
    m = (n + 1) // 2
    at_most = _counts_at_most(ordered)

    def cdf(j: int) -> float:
        return 1.0 - binom_cdf(m - 1, n, at_most[j] / n)

    tail = (1.0 - confidence) / 2.0
    return (ordered[_first_reaching(cdf, tail, n)], ordered[_first_reaching(cdf, 1.0 - tail, n)])


def _counts_at_most(ordered: Sequence[float]) -> list[int]:
    """For each position, how many values are <= the value there (ties share a count)."""
    counts = [0] * len(ordered)
    end = len(ordered)
    for i in range(len(ordered) - 1, -1, -1):
        if i + 1 < len(ordered) and ordered[i] != ordered[i + 1]:
            end = i + 1
        counts[i] = end
    return counts


def _first_reaching(cdf: Callable[[int], float], level: float, n: int) -> int:
    """The smallest index whose ``cdf`` (non-decreasing) is at least ``level``."""
    low, high = 0, n - 1
    while low < high:
        middle = (low + high) // 2
        if cdf(middle) >= level:
            high = middle
        else:
            low = middle + 1
    return low


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


# --- multiple comparisons ------------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=p_values.__getitem__)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=p_values.__getitem__, reverse=True)
    adjusted = [0.0] * m
    running = 1.0
    for position, index in enumerate(order):
        rank = m - position
        running = min(running, p_values[index] * m / rank)
        adjusted[index] = min(1.0, running)
    return adjusted


# --- power and minimum detectable differences ---------------------------------------


def _z_alpha(alpha: float, two_sided: bool) -> float:
    return norm_ppf(1.0 - alpha / 2.0) if two_sided else norm_ppf(1.0 - alpha)


def n_two_proportions(
    p1: float, p2: float, *, alpha: float = 0.05, power: float = 0.8, two_sided: bool = False
) -> float:
    """Rows per group for a two-proportion z test to detect p1 vs p2 (equal groups)."""
    delta = abs(p1 - p2)
    if delta == 0.0:
        return math.inf
    za, zb = _z_alpha(alpha, two_sided), norm_ppf(power)
    pbar = (p1 + p2) / 2.0
    root = za * math.sqrt(2.0 * pbar * (1.0 - pbar)) + zb * math.sqrt(
        p1 * (1.0 - p1) + p2 * (1.0 - p2)
    )
    return root * root / (delta * delta)


def mde_two_proportions(
    p_base: float,
    n1: int,
    n2: int,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    two_sided: bool = False,
) -> float:
    """Smallest increase over ``p_base`` that n1 and n2 rows detect with ``power``."""
    if n1 <= 0 or n2 <= 0:
        return math.nan
    za, zb = _z_alpha(alpha, two_sided), norm_ppf(power)

    def detectable(delta: float) -> bool:
        p1 = min(1.0, p_base + delta)
        pooled = (n1 * p1 + n2 * p_base) / (n1 + n2)
        se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
        se1 = math.sqrt(p1 * (1.0 - p1) / n1 + p_base * (1.0 - p_base) / n2)
        return delta >= za * se0 + zb * se1

    return _bisect(detectable, 1.0 - p_base)


def n_paired_proportions(
    discordant: float, delta: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Labels for McNemar's test to detect an accuracy difference ``delta`` when a share
    ``discordant`` of requests has exactly one model right (Connor 1987)."""
    if delta == 0.0 or discordant <= 0.0 or delta * delta >= discordant:
        return math.inf
    za, zb = _z_alpha(alpha, True), norm_ppf(power)
    root = za * math.sqrt(discordant) + zb * math.sqrt(discordant - delta * delta)
    return root * root / (delta * delta)


def mde_paired_proportions(
    discordant: float, n: int, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest accuracy difference McNemar's test detects on ``n`` labels."""
    if n <= 0 or discordant <= 0.0:
        return math.nan
    return _bisect(
        lambda delta: n_paired_proportions(discordant, delta, alpha=alpha, power=power) <= n,
        math.sqrt(discordant) * (1.0 - 1e-12),
    )


def n_paired_means(sd: float, delta: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Pairs for a paired test of means to detect ``delta`` given the differences' sd."""
    if delta == 0.0:
        return math.inf
    root = (_z_alpha(alpha, True) + norm_ppf(power)) * sd
    return root * root / (delta * delta)


def mde_paired_means(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    if n <= 0:
        return math.nan
    return (_z_alpha(alpha, True) + norm_ppf(power)) * sd / math.sqrt(n)


def _bisect(detectable: Callable[[float], bool], upper: float) -> float:
    """The smallest delta in (0, upper] for which ``detectable`` holds, else NaN."""
    if upper <= 0.0 or not detectable(upper):
        return math.nan
    low, high = 0.0, upper
    for _ in range(60):
        middle = (low + high) / 2.0
        if detectable(middle):
            high = middle
        else:
            low = middle
    return high
