"""Intervals built to agree with their own test, as pure functions over plain numbers.

Each interval here is the inversion of the test quoted beside it, so the two can never
disagree about zero (or about a margin):

- :func:`clopper_pearson` inverts the exact equal-tailed binomial test;
- :func:`paired_accuracy_ci` is built from the Clopper-Pearson interval of ``c / (b + c)``,
  and excludes 0 exactly when the exact McNemar test rejects at the same level;
- :func:`paired_t` is the one-sample t test on paired differences and its t interval.

Like :mod:`~shadowproxy.stats`, nothing here needs scipy or numpy at run time
(the tests check every figure against scipy). Non-finite input is refused, never
silently folded into a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext

from shadowproxy.stats import DfTestResult, binom_cdf, binom_upper_tail
from shadowproxy.stats.distributions import norm_ppf, norm_sf, t_isf, t_sf, z_for

BISECTIONS = 64
"""Steps of every bisection here: 2^-64 of the unit interval is below float precision."""


def clopper_pearson(x: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a binomial proportion ``x / n``.

    The lower end solves ``P(X >= x | p) = (1 - confidence) / 2``, the upper end
    ``P(X <= x | p) = (1 - confidence) / 2``, both by bisection on :func:`binom_cdf`:
    ``scipy.stats.binomtest(x, n).proportion_ci(method="exact")``. ``n = 0`` gives
    ``[0, 1]``: no data rules nothing out.
    """
    if x < 0 or n < 0 or x > n:
        raise ValueError(f"need 0 <= x <= n, got x={x}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    tail = (1.0 - confidence) / 2.0
    lo = 0.0 if x == 0 else _beta_ppf(x, n - x + 1, tail)
    hi = 1.0 if x == n else _beta_ppf(x + 1, n - x, 1.0 - tail)
    return (lo, hi)


def _at_least(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k), summed directly above the mode (``1 - cdf`` would lose
    every digit when the tail is tiny: the lower bound of 1 success in 100,000)."""
    if k > n * p:
        return binom_upper_tail(k, n, p)
    return 1.0 - binom_cdf(k - 1, n, p)


def _beta_ppf(a: int, b: int, target: float) -> float:
    """The ``target`` quantile of Beta(a, b) for integers a, b >= 1, whose CDF is the
    binomial tail ``I_p(a, b) = P(Binomial(a + b - 1, p) >= a)``: Newton steps on that
    CDF (its derivative is the beta density), kept inside a shrinking bracket, with
    bisection whenever a step would leave it. A handful of steps instead of 64
    bisections: the decision inverts these bounds many times."""
    n = a + b - 1
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    low, high = 0.0, 1.0
    mean = a / (a + b)
    p = mean + norm_ppf(target) * math.sqrt(mean * (1.0 - mean) / (a + b + 1))
    if not 0.0 < p < 1.0:
        p = mean
    for _ in range(BISECTIONS):
        error = _at_least(a, n, p) - target
        if error > 0.0:
            high = p
        else:
            low = p
        density = math.exp(log_norm + (a - 1) * math.log(p) + (b - 1) * math.log1p(-p))
        step = error / density if density > 0.0 else math.inf
        candidate = p - step
        if not low < candidate < high:
            candidate = (low + high) / 2.0
        if abs(candidate - p) <= 1e-12 * p or high - low < 1e-16:
            return candidate
        p = candidate
    return p


def paired_accuracy_ci(b: int, c: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the paired accuracy difference ``(c - b) / n`` (shadow minus
    production), consistent with :func:`~shadowproxy.stats.mcnemar_exact`.

    The difference is ``q f`` with ``q = (b + c) / n`` the discordant share and
    ``f = 2 pi - 1``, where ``pi = c / (b + c)`` is the share of discordant requests the
    shadow gets right. ``pi`` gets its Clopper-Pearson interval, the inversion of the
    exact McNemar test, and ``q`` its own; the two are combined by MOVER (Zou and Donner
    2008: each factor's distance to its bound, added in quadrature). The sign is then
    tied to McNemar's: the interval excludes 0 exactly when the exact test rejects at
    ``1 - confidence`` (where MOVER would not, the product of the near bounds is used).
    Without discordant requests, or with a single label, the interval is
    ``[-q_hi, q_hi]``: it keeps a width.
    """
    if b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need b, c >= 0 and b + c <= n, got b={b}, c={c}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    m = b + c
    q_lo, q_hi = clopper_pearson(m, n, confidence)
    if m == 0:
        return (-q_hi, q_hi)
    pi_lo, pi_hi = clopper_pearson(c, m, confidence)
    q, f = m / n, (c - b) / m
    f_lo, f_hi = 2.0 * pi_lo - 1.0, 2.0 * pi_hi - 1.0
    lo = q * f - math.hypot(q * (f - f_lo), f * (q - (q_lo if f > 0 else q_hi)))
    hi = q * f + math.hypot(q * (f_hi - f), f * ((q_hi if f > 0 else q_lo) - q))
    if f_lo > 0.0:
        lo = max(lo, q_lo * f_lo)
    if f_hi < 0.0:
        hi = min(hi, q_lo * f_hi)
    return (min(lo, q * f_lo), max(hi, q * f_hi)) if f_lo <= 0.0 <= f_hi else (lo, hi)


def paired_t(mean: float, variance: float, n: int, confidence: float = 0.95) -> PairedT:
    """One-sample t test that the mean paired difference is 0, with its t interval
    (``scipy.stats.ttest_1samp(d, 0)`` and its ``confidence_interval``), from the
    differences' mean, sample variance and count (what DuckDB's ``avg`` and
    ``var_samp`` return over every pair, so no sample is needed).

    Fewer than two pairs: NaN. Zero variance: every difference is the mean, so the test
    is certain (p = 1 for a zero mean, else 0) and the interval is the point.
    """
    if not (math.isfinite(mean) and math.isfinite(variance)):
        raise ValueError(f"paired_t needs a finite mean and variance, got {mean}, {variance}")
    if variance < 0.0:
        raise ValueError(f"variance cannot be negative, got {variance}")
    if n < 2:
        nan = DfTestResult("paired t", math.nan, math.nan, df=math.nan)
        return PairedT(nan, mean, (math.nan, math.nan), math.nan)
    df = n - 1
    se = math.sqrt(variance / n)
    if se == 0.0:
        statistic = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        test = DfTestResult("paired t", statistic, 1.0 if mean == 0.0 else 0.0, df=df)
        return PairedT(test, mean, (mean, mean), 0.0)
    statistic = mean / se
    test = DfTestResult("paired t", statistic, min(1.0, 2.0 * t_sf(abs(statistic), df)), df=df)
    half = t_isf((1.0 - confidence) / 2.0, df) * se
    return PairedT(test, mean, (mean - half, mean + half), se)


@dataclass(frozen=True, slots=True)
class PairedT:
    """A paired t test, the mean difference, its interval and standard error."""

    test: DfTestResult
    mean: float
    ci: tuple[float, float]
    se: float


def moments(
    n: int, total: Decimal | float | None, squares: Decimal | float | None
) -> tuple[float, float] | None:
    """Mean and sample variance from a count, a sum and a sum of squares, computed in
    exact decimal arithmetic (the sums come from fixed-point ``DECIMAL`` columns), so
    ``squares - total^2 / n`` loses nothing to cancellation. None below two values."""
    if n < 2 or total is None or squares is None:
        return None
    with localcontext() as context:
        context.prec = 80
        s1, s2 = Decimal(total), Decimal(squares)
        mean = s1 / n
        variance = max((s2 - s1 * s1 / n) / (n - 1), Decimal(0))
        return (float(mean), float(variance))


def quantile_ci(
    ordered: Sequence[float], q: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Distribution-free interval for the ``q`` quantile from a sorted sample: the order
    statistics at ranks ``n q -/+ z sqrt(n q (1 - q))`` (normal approximation to the
    binomial count of values below the quantile). NaN for an empty sample."""
    n = len(ordered)
    if n == 0:
        return (math.nan, math.nan)
    if not all(math.isfinite(v) for v in (ordered[0], ordered[-1])):
        raise ValueError("quantile_ci needs finite values")
    spread = z_for(confidence) * math.sqrt(n * q * (1.0 - q))
    low = max(0, math.floor(n * q - spread) - 1)
    high = min(n - 1, math.ceil(n * q + spread) - 1)
    return (ordered[low], ordered[high])


def z_one_sided_p(estimate: float, limit: float, se: float) -> float:
    """P-value of the one-sided z test that the true value is at least ``limit``
    (small when ``estimate`` is confidently below it)."""
    if se <= 0.0:
        return 0.0 if estimate < limit else 1.0
    return norm_sf((limit - estimate) / se)
