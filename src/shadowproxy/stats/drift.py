"""Has a distribution moved? Two-sample tests and the population stability index.

Pure Python over plain numbers, like the rest of ``stats`` (whose chi-square and Holm this
reuses). Numeric values: the two-sample Kolmogorov-Smirnov test and PSI over 10 bins
cut at the reference's deciles. Categories: Pearson's chi-square test of homogeneity on
the 2 x K table of counts, and PSI over the categories.

PSI is ``sum((c - r) * ln(c / r))`` over bins, ``r`` and ``c`` the reference and
current shares. A bin empty on one side would make it infinite, so shares are smoothed:
each bin's count gets 0.5 added before dividing by ``n + 0.5 * K`` (K bins). Rules of
thumb: below 0.1 stable, 0.1-0.2 some shift, above 0.2 a shift worth acting on.

A test alone does not decide drift: at the sample sizes a proxy sees, any difference is
significant. ``flag`` asks for both a Holm-adjusted p below ``alpha`` and a PSI at or
above a threshold, so the effect size carries the decision.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shadowproxy.stats import TestResult, chi_square_independence, holm

PSI_BINS = 10
PSI_SMOOTHING = 0.5
"""Added to every bin's count before shares are taken (see the module docstring)."""
TOP_MOVED = 5
"""Categories listed as the ones that moved most."""
QUANTILES = (0.1, 0.5, 0.9)


EXACT_KS_MAX_PRODUCT = 10_000
"""Up to this ``n * m`` the KS p-value is exact (scipy's ``method="auto"`` rule)."""


def ks_2samp(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided two-sample Kolmogorov-Smirnov: the largest gap between the empirical
    CDFs, as ``scipy.stats.ks_2samp(a, b)``.

    Up to ``EXACT_KS_MAX_PRODUCT`` the p-value is exact (lattice paths, integer
    arithmetic). Above it, Kolmogorov's limiting distribution at ``(sqrt(en) + 0.12 +
    0.11 / sqrt(en)) * D`` with ``en = n*m / (n+m)`` (Stephens' small-sample
    correction), within a few percent of scipy's asymptotic p-value, which is all a
    threshold of 0.001 needs. Either side empty gives NaN.
    """
    name = "kolmogorov-smirnov"
    if not a or not b:
        return TestResult(name, math.nan, math.nan)
    x, y = sorted(a), sorted(b)
    n, m = len(x), len(y)
    gap, i, j = 0, 0, 0  # the gap in units of 1 / (n * m), so ties stay exact
    while i < n and j < m:
        value = min(x[i], y[j])
        while i < n and x[i] == value:
            i += 1
        while j < m and y[j] == value:
            j += 1
        gap = max(gap, abs(i * m - j * n))
    d = gap / (n * m)
    if n * m <= EXACT_KS_MAX_PRODUCT:
        return TestResult(name, d, _ks_exact_sf(n, m, gap))
    en = math.sqrt(n * m / (n + m))
    return TestResult(name, d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d))


def _ks_exact_sf(n: int, m: int, gap: int) -> float:
    """``P(D >= gap / (n*m))`` under the null: one minus the share of the ``C(n+m, n)``
    orderings whose path keeps every ``|i*m - j*n|`` below ``gap``."""
    if gap == 0:
        return 1.0
    previous = [1 if j * n < gap else 0 for j in range(m + 1)]
    for j in range(1, m + 1):
        if previous[j]:
            previous[j] = previous[j - 1]
    for i in range(1, n + 1):
        row = [0] * (m + 1)
        for j in range(m + 1):
            if abs(i * m - j * n) < gap:
                row[j] = previous[j] + (row[j - 1] if j else 0)
        previous = row
    return min(1.0, max(0.0, 1.0 - previous[m] / math.comb(n + m, n)))


def kolmogorov_sf(z: float) -> float:
    """``P(K > z)`` for Kolmogorov's distribution (``scipy.stats.kstwobign.sf``)."""
    if z <= 0:
        return 1.0
    if z < 1.18:  # the alternating series converges slowly here; use the theta form
        y = math.exp(-(math.pi**2) / (8 * z * z))
        cdf = math.sqrt(2 * math.pi) / z * math.fsum(y ** ((2 * k - 1) ** 2) for k in range(1, 6))
        return min(1.0, max(0.0, 1.0 - cdf))
    terms = (2 * (-1) ** (k - 1) * math.exp(-2 * k * k * z * z) for k in range(1, 101))
    return min(1.0, max(0.0, math.fsum(terms)))


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def decile_edges(reference: Sequence[float]) -> list[float]:
    """The inner edges of the PSI bins: the reference's deciles, ties merged."""
    ordered = sorted(reference)
    edges = [quantile(ordered, k / PSI_BINS) for k in range(1, PSI_BINS)]
    return sorted(set(edges))


def bin_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin ``(-inf, e1], (e1, e2], ..., (ek, inf)``."""
    counts = [0] * (len(edges) + 1)
    for value in values:
        counts[bisect.bisect_left(edges, value)] += 1
    return counts


def psi(reference_counts: Sequence[int], current_counts: Sequence[int]) -> float:
    """Population stability index of two count vectors over the same bins (smoothed)."""
    if len(reference_counts) != len(current_counts) or not reference_counts:
        raise ValueError(
            f"need counts over the same bins, got {len(reference_counts)} and {len(current_counts)}"
        )
    k = len(reference_counts)
    n_ref, n_cur = sum(reference_counts), sum(current_counts)
    if n_ref == 0 or n_cur == 0:
        return math.nan
    total = 0.0
    for r_count, c_count in zip(reference_counts, current_counts, strict=True):
        r = (r_count + PSI_SMOOTHING) / (n_ref + PSI_SMOOTHING * k)
        c = (c_count + PSI_SMOOTHING) / (n_cur + PSI_SMOOTHING * k)
        total += (c - r) * math.log(c / r)
    return total


def numeric_psi(reference: Sequence[float], current: Sequence[float]) -> float:
    edges = decile_edges(reference)
    return psi(bin_counts(reference, edges), bin_counts(current, edges))


def chi_square_homogeneity(
    reference: Mapping[str, int], current: Mapping[str, int]
) -> tuple[TestResult, float]:
    """Pearson's chi-square on the 2 x K table and PSI over the K categories."""
    categories = sorted(set(reference) | set(current))
    ref = [reference.get(c, 0) for c in categories]
    cur = [current.get(c, 0) for c in categories]
    if not categories or not sum(ref) or not sum(cur):
        return TestResult("chi-square homogeneity", math.nan, math.nan), math.nan
    result = chi_square_independence([ref, cur])
    test = TestResult("chi-square homogeneity", result.statistic, result.p_value)
    return test, psi(ref, cur)


Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True, slots=True)
class Drift:
    """One feature's (or the prediction's) comparison, as summary.json shows it."""

    name: str
    kind: Kind
    test: TestResult
    psi: float
    effect: dict[str, Any] = field(default_factory=dict)
    n_reference: int = 0
    n_current: int = 0
    p_adjusted: float = math.nan
    flagged: bool = False


def numeric_drift(name: str, reference: Sequence[float], current: Sequence[float]) -> Drift:
    ref, cur = sorted(reference), sorted(current)
    effect: dict[str, Any] = {}
    if ref and cur:
        ref_mean, cur_mean = math.fsum(ref) / len(ref), math.fsum(cur) / len(cur)
        effect = {
            "reference_mean": ref_mean,
            "current_mean": cur_mean,
            "mean_shift": cur_mean - ref_mean,
            "quantile_shift": {
                f"p{round(q * 100)}": quantile(cur, q) - quantile(ref, q) for q in QUANTILES
            },
        }
    value = numeric_psi(ref, cur) if ref and cur else math.nan
    return Drift(name, "numeric", ks_2samp(ref, cur), value, effect, len(ref), len(cur))


def categorical_drift(name: str, reference: Mapping[str, int], current: Mapping[str, int]) -> Drift:
    test, value = chi_square_homogeneity(reference, current)
    n_ref, n_cur = sum(reference.values()), sum(current.values())
    shares: list[tuple[str, float, float]] = []
    if n_ref and n_cur:
        for category in set(reference) | set(current):
            before, after = reference.get(category, 0) / n_ref, current.get(category, 0) / n_cur
            shares.append((category, before, after))
        shares.sort(key=lambda s: (-abs(s[2] - s[1]), s[0]))
    moved = [
        {"category": c, "reference_share": before, "current_share": after}
        for c, before, after in shares[:TOP_MOVED]
    ]
    effect: dict[str, Any] = {"moved": moved}
    return Drift(name, "categorical", test, value, effect, n_ref, n_cur)


def flag(results: Sequence[Drift], alpha: float, psi_threshold: float) -> list[Drift]:
    """Holm across ``results``; flagged when adjusted p < alpha and PSI >= the threshold.
    A test with no p-value (too little data) is never flagged and takes no part in Holm."""
    tested = [i for i, r in enumerate(results) if not math.isnan(r.test.p_value)]
    adjusted = dict(zip(tested, holm([results[i].test.p_value for i in tested]), strict=True))
    out = []
    for index, result in enumerate(results):
        p = adjusted.get(index, math.nan)
        flagged = p < alpha and result.psi >= psi_threshold
        out.append(replace(result, p_adjusted=p, flagged=flagged))
    return out
