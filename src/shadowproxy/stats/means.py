"""Means from summaries: the normal interval of a mean and Welch's t test and interval."""

from __future__ import annotations

import math

from shadowproxy.stats.distributions import (
    t_isf,
    t_ppf,
    t_sf,
)
from shadowproxy.stats.results import (
    DfTestResult,
)


def mean_ci(mean: float, variance: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval for a mean from its summary; NaN below two values."""
    if n < 2:
        return (math.nan, math.nan)
    half = t_ppf(1.0 - (1.0 - confidence) / 2.0, n - 1) * math.sqrt(variance / n)
    return (mean - half, mean + half)


def welch_t_test(
    a_mean: float, a_var: float, a_n: int, b_mean: float, b_var: float, b_n: int
) -> DfTestResult:
    """Welch's two-sided t test of mean A = mean B from per-arm summaries (the report
    aggregates in DuckDB: ``avg``, ``var_samp``, ``count``), equal to
    ``scipy.stats.ttest_ind_from_stats(..., equal_var=False)``.

    Welch rather than Student because experiment arms differ in size by design and in
    variance by effect. An arm with fewer than two rows has no variance: the result is
    all NaN. One arm with zero variance is fine (df becomes the other arm's n - 1). Both
    at zero leaves nothing to scale by: equal means give statistic 0 and p = 1,
    different means an infinite statistic and p = 0, with df NaN in both cases.
    """
    parts = _welch_parts(a_var, a_n, b_var, b_n)
    if parts is None:
        return DfTestResult("Welch t", math.nan, math.nan, df=math.nan)
    se, df = parts
    diff = a_mean - b_mean
    if se == 0.0:
        statistic = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        return DfTestResult("Welch t", statistic, 1.0 if diff == 0.0 else 0.0, df=math.nan)
    statistic = diff / se
    return DfTestResult("Welch t", statistic, min(1.0, 2.0 * t_sf(abs(statistic), df)), df=df)


def welch_ci(
    a_mean: float,
    a_var: float,
    a_n: int,
    b_mean: float,
    b_var: float,
    b_n: int,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Interval for mean A - mean B on Welch's df: the one :func:`welch_t_test` inverts.
    NaN when an arm has fewer than two rows; a point when both variances are zero."""
    parts = _welch_parts(a_var, a_n, b_var, b_n)
    if parts is None:
        return (math.nan, math.nan)
    se, df = parts
    diff = a_mean - b_mean
    half = 0.0 if se == 0.0 else t_isf((1.0 - confidence) / 2.0, df) * se
    return (diff - half, diff + half)


def _welch_parts(a_var: float, a_n: int, b_var: float, b_n: int) -> tuple[float, float] | None:
    """Standard error of the difference and the Welch-Satterthwaite df, or None when an
    arm is too small to have a variance."""
    if a_var < 0.0 or b_var < 0.0:
        raise ValueError(f"variances cannot be negative, got {a_var} and {b_var}")
    if a_n < 2 or b_n < 2:
        return None
    va, vb = a_var / a_n, b_var / b_n
    if va + vb == 0.0:
        return (0.0, math.nan)
    df = (va + vb) ** 2 / (va * va / (a_n - 1) + vb * vb / (b_n - 1))
    return (math.sqrt(va + vb), df)
