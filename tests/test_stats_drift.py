"""Drift statistics against scipy (KS, chi-square) and a hand computation (PSI), and
the flag rule: Holm-adjusted p below alpha and PSI at or above the threshold."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sp

from shadowproxy import stats
from shadowproxy.stats import drift


def normal(seed: int, n: int, mean: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, 1.0) for _ in range(n)]


@pytest.mark.parametrize(
    ("n", "m", "shift"),
    [(7, 9, 1.0), (50, 50, 0.3), (100, 80, 0.2), (40, 60, 0.5), (100, 100, 0.0)],
)
def test_ks_is_exact_like_scipy_on_small_samples(n: int, m: int, shift: float) -> None:
    a, b = normal(n, n), normal(m + 1, m, shift)
    ours, theirs = drift.ks_2samp(a, b), sp.ks_2samp(a, b)
    assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)


@pytest.mark.parametrize(
    ("n", "m", "shift"), [(2000, 1500, 0.1), (2000, 1500, 0.15), (300, 300, 0)]
)
def test_ks_is_close_to_scipy_on_large_samples(n: int, m: int, shift: float) -> None:
    a, b = normal(n, n), normal(m + 1, m, shift)
    ours, theirs = drift.ks_2samp(a, b), sp.ks_2samp(a, b)
    assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=0.05)


def test_ks_with_ties_and_a_clear_shift() -> None:
    a = [float(v % 5) for v in range(500)]
    b = [float(v % 5) + 1 for v in range(500)]
    ours, theirs = drift.ks_2samp(a, b), sp.ks_2samp(a, b)
    assert ours.statistic == pytest.approx(theirs.statistic) == pytest.approx(0.2)
    assert ours.p_value < 1e-8 and theirs.pvalue < 1e-8
    assert math.isnan(drift.ks_2samp([], b).p_value)


@pytest.mark.parametrize("z", [0.05, 0.4, 0.9, 1.17, 1.19, 1.6, 2.5, 4.0])
def test_kolmogorov_distribution(z: float) -> None:
    assert drift.kolmogorov_sf(z) == pytest.approx(sp.kstwobign.sf(z), rel=1e-9)


def test_chi_square_homogeneity_agrees_with_scipy() -> None:
    reference = {"US": 400, "DE": 250, "FR": 200, "JP": 150}
    current = {"US": 380, "DE": 300, "FR": 170, "JP": 120, "other": 30}
    test, _ = drift.chi_square_homogeneity(reference, current)
    keys = sorted(set(reference) | set(current))
    table = [[reference.get(k, 0) for k in keys], [current.get(k, 0) for k in keys]]
    expected = sp.chi2_contingency(table, correction=False)
    assert test.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert test.p_value == pytest.approx(expected.pvalue, rel=1e-6)


def test_psi_by_hand() -> None:
    # Two bins, counts (30, 70) and (50, 50), smoothing 0.5 per bin:
    r = [30.5 / 101, 70.5 / 101]
    c = [50.5 / 101, 50.5 / 101]
    by_hand = (c[0] - r[0]) * math.log(c[0] / r[0]) + (c[1] - r[1]) * math.log(c[1] / r[1])
    assert drift.psi([30, 70], [50, 50]) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.19802 * 0.50425 + 0.19802 * 0.33364, abs=1e-4)  # 0.1659
    # An empty bin stays finite thanks to the smoothing.
    assert math.isfinite(drift.psi([100, 0], [0, 100]))


def test_numeric_psi_uses_reference_deciles() -> None:
    reference = [float(v) for v in range(1, 101)]  # deciles at 10.9, 20.8, ...
    edges = drift.decile_edges(reference)
    assert edges[0] == pytest.approx(10.9) and len(edges) == 9
    assert drift.bin_counts(reference, edges) == [10] * 10
    assert drift.numeric_psi(reference, reference) == 0.0
    shifted = [v + 30 for v in reference]
    counts = drift.bin_counts(shifted, edges)
    assert counts == [0, 0, 0, 10, 10, 10, 10, 10, 10, 40]
    assert drift.numeric_psi(reference, shifted) == pytest.approx(drift.psi([10] * 10, counts))


def test_effects_name_the_shift() -> None:
    result = drift.numeric_drift("x", normal(1, 1000), normal(2, 1000, 2.0))
    assert result.effect["mean_shift"] == pytest.approx(2.0, abs=0.15)
    assert result.effect["quantile_shift"]["p50"] == pytest.approx(2.0, abs=0.2)
    moved = drift.categorical_drift("c", {"a": 50, "b": 50}, {"a": 20, "b": 50, "c": 30})
    assert [m["category"] for m in moved.effect["moved"]] == ["a", "c", "b"]


def test_flag_needs_both_significance_and_effect() -> None:
    def result(p: float, psi: float) -> drift.Drift:
        return drift.Drift("f", "numeric", stats.TestResult("t", 0.0, p), psi)

    flagged = drift.flag(
        [result(1e-9, 0.5), result(1e-9, 0.05), result(0.01, 0.9), result(math.nan, 1.0)],
        alpha=0.001,
        psi_threshold=0.2,
    )
    assert [r.flagged for r in flagged] == [True, False, False, False]
    assert flagged[0].p_adjusted == pytest.approx(3e-9)  # Holm over the three with a p
    assert math.isnan(flagged[3].p_adjusted)
