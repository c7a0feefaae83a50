"""Pearson chi-square tests: goodness of fit (the sample-ratio check) and k x 2
independence."""

from __future__ import annotations

import math
from collections.abc import Sequence

from shadowproxy.stats.distributions import (
    chi2_sf,
)
from shadowproxy.stats.results import (
    DfTestResult,
)


def chi_square_goodness_of_fit(
    observed: Sequence[int], expected_weights: Sequence[float]
) -> DfTestResult:
    """Pearson's chi-square of arm counts against the configured split: the
    sample-ratio-mismatch check. A mismatch means assignment or logging is broken, and
    then every other number in the experiment is suspect, so it is tested first.

    Weights need not sum to 1. An arm with weight 0 and no rows is left out; rows in an
    arm with weight 0 are a mismatch by definition (statistic inf, p = 0). No rows at
    all gives NaN; a single arm with weight has nothing to mismatch (p = 1, df 0).
    """
    if len(observed) != len(expected_weights) or len(observed) < 2:
        raise ValueError(
            f"need a weight for each of at least two arms, got {len(observed)} counts "
            f"and {len(expected_weights)} weights"
        )
    _check_counts(observed)
    if not all(0.0 <= w < math.inf for w in expected_weights) or not any(expected_weights):
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {expected_weights}")
    name, total = "chi-square goodness of fit", sum(observed)
    if total == 0:
        return DfTestResult(name, math.nan, math.nan, df=math.nan)
    cells = [(o, w) for o, w in zip(observed, expected_weights, strict=True) if o or w]
    df = len(cells) - 1
    if any(w == 0.0 for _, w in cells):
        return DfTestResult(name, math.inf, 0.0, df=df)
    scale = total / math.fsum(expected_weights)
    statistic = math.fsum((o - w * scale) ** 2 / (w * scale) for o, w in cells)
    return DfTestResult(name, statistic, chi2_sf(statistic, df) if df else 1.0, df=df)


def chi_square_independence(table: Sequence[Sequence[int]]) -> DfTestResult:
    """Pearson's chi-square test that the outcome does not depend on the arm, without
    continuity correction: ``scipy.stats.chi2_contingency(table, correction=False)``.

    Rows are arms, columns outcomes (k x 2 for a binary outcome; any r x c works). Rows
    and columns of zeros carry no information and are left out (scipy refuses them):
    fewer than two arms with rows gives NaN, a single outcome in every arm gives
    statistic 0 and p = 1, like :func:`two_proportion_z` when both rates are 0 or 1.
    """
    if not table or len({len(row) for row in table}) != 1:
        raise ValueError("the table needs at least one row, all rows of the same length")
    for row in table:
        _check_counts(row)
    rows = [row for row in table if any(row)]
    columns = [j for j in range(len(table[0])) if any(row[j] for row in rows)]
    name = "chi-square independence"
    if len(rows) < 2:
        return DfTestResult(name, math.nan, math.nan, df=math.nan)
    df = (len(rows) - 1) * (len(columns) - 1)
    if df == 0:
        return DfTestResult(name, 0.0, 1.0, df=0)
    row_sums = [sum(row) for row in rows]
    column_sums = [sum(row[j] for row in rows) for j in columns]
    total = sum(row_sums)
    statistic = math.fsum(
        (row[j] - r * c / total) ** 2 / (r * c / total)
        for row, r in zip(rows, row_sums, strict=True)
        for j, c in zip(columns, column_sums, strict=True)
    )
    return DfTestResult(name, statistic, chi2_sf(statistic, df), df=df)


def _check_counts(counts: Sequence[int]) -> None:
    if any(count < 0 for count in counts):
        raise ValueError(f"counts cannot be negative, got {list(counts)}")
