"""The probability distributions the report's tests need: normal, Student's t, chi-square.

Pure Python and accurate in the far tails (agreeing with scipy to about 1e-13
relative, p-values down to 1e-300), so a test's p-value of 1e-20 is reported as such
rather than rounded to 0. ``shadowproxy.stats`` builds the tests on top.
"""

from __future__ import annotations

import math
from statistics import NormalDist

_NORMAL = NormalDist()


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


# --- Student's t and chi-square ------------------------------------------------------
#
# Both tails come from continued fractions evaluated on the side where the tail is
# small (Numerical Recipes 6.2 and 6.4), so a p-value of 1e-20 is computed directly,
# never as ``1 - (1 - 1e-20)``; they converge in at most a few hundred steps. The
# prefactors ``x^a y^b / B(a, b)`` and ``x^a e^-x / Gamma(a)`` are where the digits go
# at large df: ``lgamma(5e5)`` is 6e6, whose rounding alone costs 1e-9, so they are
# built from Stirling's remainder and ``log1p`` instead of differences of ``lgamma``.

_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_TINY = 1e-300
_MAX_TERMS = 1_000_000


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (any df > 0: Welch's
    df is fractional)."""
    if not df > 0.0:
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if math.isinf(df) or math.isnan(t):
        return norm_sf(t)
    if t < 0.0:
        return 1.0 - t_sf(-t, df)
    x, y = _t_to_beta(t, df)
    return 0.5 * _betainc(df / 2.0, 0.5, x, y)


def t_cdf(t: float, df: float) -> float:
    return t_sf(-t, df)


def t_ppf(q: float, df: float) -> float:
    if not 0.0 < q < 1.0:
        return {0.0: -math.inf, 1.0: math.inf}.get(q, math.nan)
    return t_isf(1.0 - q, df) if q > 0.5 else -t_isf(q, df)


def _t_to_beta(t: float, df: float) -> tuple[float, float]:
    """``x = df / (df + t^2)`` and ``y = 1 - x``, each to full relative precision (the
    tail depends on whichever is small), without overflowing ``t^2``."""
    if t * t < df:
        s = t * t / df
        return 1.0 / (1.0 + s), s / (1.0 + s)
    r = df / t / t
    return r / (1.0 + r), 1.0 / (1.0 + r)


def _t_pdf(t: float, df: float) -> float:
    log_kernel = -(df + 1.0) / 2.0 * math.log1p(t * t / df)
    return math.exp(log_kernel - 0.5 * math.log(df) - _log_beta(df / 2.0, 0.5))


def t_isf(p: float, df: float) -> float:
    """The t with ``t_sf(t) = p`` for ``0 < p <= 1/2``: Newton's method on ``log sf``,
    which is nearly linear in the tail, kept inside a bracket that every step narrows."""
    if math.isinf(df):
        return -norm_ppf(p)
    low, high = 0.0, math.inf
    t = -norm_ppf(p)
    for _ in range(400):
        sf = t_sf(t, df)
        if sf == p:
            return t
        low, high = (t, high) if sf > p else (low, t)
        new = _log_newton_step(t, sf, p, df)
        if not low < new < high:
            new = _widen_or_split(low, high, t)
        if abs(new - t) <= 1e-15 * new:
            return new
        t = new
    raise ArithmeticError(f"t quantile did not converge for p={p}, df={df}")


def _widen_or_split(low: float, high: float, t: float) -> float:
    """Where to go when Newton leaves the bracket: far out while there is no upper end,
    else the geometric middle, as quantiles span hundreds of orders of magnitude."""
    if math.isinf(high):
        return 8.0 * t + 1.0
    return math.sqrt(low * high) if low > 0.0 else high / 2.0


def _log_newton_step(t: float, sf: float, p: float, df: float) -> float:
    density = _t_pdf(t, df)
    if sf == 0.0 or density == 0.0:
        return math.nan
    return t + (math.log(sf) - math.log(p)) * sf / density


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for chi-square with ``df`` degrees of freedom: ``Q(df / 2, x / 2)``."""
    if not df > 0.0:
        raise ValueError(f"chi-square distribution needs df > 0, got {df}")
    if math.isnan(x) or math.isinf(x):
        return math.nan if math.isnan(x) else 0.0
    return 1.0 if x <= 0.0 else _gamma_q(df / 2.0, x / 2.0)


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` with ``y = 1 - x`` passed separately.

    The continued fraction is evaluated on the side of the mean where it converges
    fast, in the form of Didonato and Morris (ACM TOMS 708, BFRAC) that is written in
    ``lambda = (a + b) y - b`` and ``y``: the textbook form multiplies by ``x``, and at
    df = 1e7 the rounding of ``x`` near 1 alone costs 1e-10.
    """
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    lam = (a + b) * y - b if a > b else a - (a + b) * x
    if lam < 0.0:
        return 1.0 - _beta_fraction(b, a, y, x, -lam)
    return _beta_fraction(a, b, x, y, lam)


def _beta_fraction(a: float, b: float, x: float, y: float, lam: float) -> float:
    front = math.exp(a * _log_near_one(x, y) + b * _log_near_one(y, x) - _log_beta(a, b))
    c, c0, c1 = 1.0 + lam, b / a, 1.0 + 1.0 / a
    p, s = 1.0, a + 1.0
    an, bn, an1, bn1 = 0.0, 1.0, 1.0, c / c1
    ratio = c1 / c
    for n in range(1, _MAX_TERMS):
        t, w, e = n / a, n * (b - n) * x, a / s
        alpha = p * (p + c0) * e * e * w * x
        beta = n + w / s + (1.0 + t) / (c1 + 2.0 * t) * (c + n * (1.0 + y))
        p, s = 1.0 + t, s + 2.0
        an, an1 = an1, alpha * an + beta * an1
        bn, bn1 = bn1, alpha * bn + beta * bn1
        previous, ratio = ratio, an1 / bn1
        if abs(ratio - previous) <= 1e-16 * ratio:
            return front * ratio
        an, bn, an1, bn1 = an / bn1, bn / bn1, ratio, 1.0
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _log_near_one(x: float, one_minus_x: float) -> float:
    """``log(x)``, through ``log1p`` when x is near 1 and only ``1 - x`` is exact."""
    return math.log1p(-one_minus_x) if one_minus_x < 0.5 else math.log(x)


def _log_beta(a: float, b: float) -> float:
    """``log B(a, b)`` without subtracting large ``lgamma`` values (R's ``lbeta``)."""
    p, q = min(a, b), max(a, b)
    share = p / (p + q)
    if p >= 10.0:
        corr = _stirling_remainder(p) + _stirling_remainder(q) - _stirling_remainder(p + q)
        log_powers = (p - 0.5) * math.log(share) + q * math.log1p(-share)
        return _LN_SQRT_2PI - 0.5 * math.log(q) + corr + log_powers
    if q >= 10.0:
        corr = _stirling_remainder(q) - _stirling_remainder(p + q)
        return math.lgamma(p) + corr + p - p * math.log(p + q) + (q - 0.5) * math.log1p(-share)
    return math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q)


def _stirling_remainder(x: float) -> float:
    """``lgamma(x) - ((x - 1/2) log x - x + log sqrt(2 pi))`` for x >= 10, where eight
    terms of Stirling's series are exact to 1e-17."""
    r = 1.0 / (x * x)
    series = 3617.0 / 122400.0
    for coefficient in (1 / 156, 691 / 360360, 1 / 1188, 1 / 1680, 1 / 1260, 1 / 360):
        series = coefficient - r * series
    return (1.0 / 12.0 - r * series) / x


def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma: the series for ``P`` below ``a + 1`` (where
    ``Q`` is not small, so ``1 - P`` keeps its digits), the continued fraction above."""
    if x < a + 1.0:
        return 1.0 - _gamma_front(a, x) * _gamma_series(a, x)
    return _gamma_front(a, x) * _gamma_fraction(a, x)


def _gamma_front(a: float, x: float) -> float:
    """``x^a e^-x / Gamma(a)``; for large a as ``sqrt(a / 2 pi) exp(a log1pmx(x/a - 1))``
    so that the two terms of size ``a log a`` cancel before rounding, not after."""
    if a < 10.0:
        return math.exp(a * math.log(x) - x - math.lgamma(a))
    log_front = a * _log1pmx((x - a) / a) - _stirling_remainder(a)
    return math.exp(log_front) * math.sqrt(a / (2.0 * math.pi))


def _log1pmx(d: float) -> float:
    """``log(1 + d) - d`` without the cancellation at small d: with ``y = d / (2 + d)``
    it is ``-d y + 2 (y^3/3 + y^5/5 + ...)``, all terms of one sign."""
    if abs(d) > 0.5:
        return math.log1p(d) - d
    y = d / (2.0 + d)
    power, total = y * y * y, 0.0
    for k in range(3, _MAX_TERMS, 2):
        term = power / k
        total += term
        if abs(term) <= 1e-17 * abs(total):
            break
        power *= y * y
    return 2.0 * total - d * y


def _gamma_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    for n in range(1, _MAX_TERMS):
        term *= x / (a + n)
        total += term
        if term <= 1e-17 * total:
            return total
    raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")


def _gamma_fraction(a: float, x: float) -> float:
    b = x + 1.0 - a
    c, d = 1.0 / _TINY, 1.0 / b
    fraction = d
    for n in range(1, _MAX_TERMS):
        an, b = -n * (n - a), b + 2.0
        d = 1.0 / _nonzero(an * d + b)
        c = _nonzero(b + an / c)
        fraction *= d * c
        if abs(d * c - 1.0) <= 1e-16:
            return fraction
    raise ArithmeticError(f"incomplete gamma fraction did not converge for a={a}, x={x}")


def _nonzero(value: float) -> float:
    """Lentz's guard: a zero denominator is replaced by a tiny one."""
    return value if abs(value) > _TINY else _TINY
