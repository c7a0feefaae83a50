"""Proportions: Wilson intervals, the two-proportion z test and its interval, the exact
binomial tail and McNemar's exact test for paired proportions."""

from __future__ import annotations

import math

from shadowproxy.stats.distributions import (
    norm_cdf,
    norm_sf,
    z_for,
)
from shadowproxy.stats.results import (
    Alternative,
    TestResult,
)


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


def proportion_diff_ci(
    x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for p1 - p2 from two independent samples: Newcombe's hybrid score
    interval (his method 10), built from each sample's Wilson interval, so it keeps its
    coverage at rates near 0 or 1 where the Wald interval does not."""
    if n1 <= 0 or n2 <= 0:
        return (math.nan, math.nan)
    p1, p2 = x1 / n1, x2 / n2
    (l1, u1), (l2, u2) = wilson_interval(x1, n1, confidence), wilson_interval(x2, n2, confidence)
    diff = p1 - p2
    return (
        diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


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
        return 1.0 - binom_upper_tail(k + 1, n, p)
    log_pmf = _log_pmf(k, n, p)
    ratio = (1.0 - p) / p
    term, total = 1.0, 1.0
    for i in range(k, 0, -1):
        term *= i * ratio / (n - i + 1)
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, math.exp(log_pmf) * total)


def binom_upper_tail(k: int, n: int, p: float) -> float:
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
