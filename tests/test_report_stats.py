"""The report's statistics against scipy (the reference, dev-only) and textbook formulas."""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sp

from shadowproxy import stats

REL = 1e-9


def close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)


# --- normal distribution -------------------------------------------------------------


@pytest.mark.parametrize("z", [-8.0, -2.5, -1.0, 0.0, 0.3, 1.96, 4.0, 8.0, 12.0])
def test_normal_tails_match_scipy(z: float) -> None:
    assert close(stats.norm_sf(z), sp.norm.sf(z))
    assert close(stats.norm_cdf(z), sp.norm.cdf(z))


@pytest.mark.parametrize("q", [0.001, 0.025, 0.5, 0.8, 0.975, 0.999])
def test_normal_quantile_matches_scipy(q: float) -> None:
    assert close(stats.norm_ppf(q), sp.norm.ppf(q))


# --- Wilson --------------------------------------------------------------------------


def wilson_reference(x: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson (1927), written as in Agresti & Coull (1998), with scipy's quantile."""
    z = sp.norm.ppf(1 - (1 - confidence) / 2)
    p = x / n
    centre = p + z**2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (centre - spread) / (1 + z**2 / n), (centre + spread) / (1 + z**2 / n)


@pytest.mark.parametrize(
    ("x", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (90, 100), (9999, 10000), (71, 1000)]
)
def test_wilson_matches_reference_formula(x: int, n: int) -> None:
    lo, hi = stats.wilson_interval(x, n)
    ref_lo, ref_hi = wilson_reference(x, n)
    assert math.isclose(lo, max(ref_lo, 0.0), abs_tol=1e-12)
    assert math.isclose(hi, min(ref_hi, 1.0), abs_tol=1e-12)


def test_wilson_known_value() -> None:
    # 0 successes in 10: the upper bound is z^2 / (n + z^2) = 0.27753...
    assert stats.wilson_interval(0, 10)[1] == pytest.approx(0.2775327998628892, rel=1e-9)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_estimate_and_stays_in_unit_interval(pair: tuple[int, int]) -> None:
    x, n = pair
    lo, hi = stats.wilson_interval(x, n)
    assert 0.0 <= lo <= x / n + 1e-12 <= hi + 2e-12 <= 1.0 + 2e-12


# --- two proportions -----------------------------------------------------------------


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(70, 1000, 4, 1000), (12, 400, 9, 380)])
def test_two_proportion_z_matches_reference(
    x1: int, n1: int, x2: int, n2: int, alternative: stats.Alternative
) -> None:
    pooled = (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    expected = {
        "two-sided": 2 * sp.norm.sf(abs(z)),
        "greater": sp.norm.sf(z),
        "less": sp.norm.cdf(z),
    }[alternative]
    result = stats.two_proportion_z(x1, n1, x2, n2, alternative)
    assert close(result.statistic, z)
    assert close(result.p_value, expected)


# --- binomial and McNemar ------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(0, 1, 0.5), (3, 12, 0.5), (10, 50, 0.5), (60, 100, 0.3), (5000, 10300, 0.5), (7, 20, 0.9)],
)
def test_binom_cdf_matches_scipy(k: int, n: int, p: float) -> None:
    assert close(stats.binom_cdf(k, n, p), sp.binom.cdf(k, n, p), rel=1e-10)


@pytest.mark.parametrize(
    ("b", "c"),
    [(1, 0), (3, 9), (10, 10), (10, 40), (100, 160), (5000, 5300), (40_000, 41_000), (0, 25)],
)
def test_mcnemar_exact_matches_scipy_binomtest(b: int, c: int) -> None:
    expected = sp.binomtest(min(b, c), b + c, 0.5).pvalue
    assert close(stats.mcnemar_exact(b, c).p_value, expected)


def test_mcnemar_without_discordant_pairs_is_not_evidence() -> None:
    assert stats.mcnemar_exact(0, 0).p_value == 1.0


# --- Wilcoxon ------------------------------------------------------------------------


def scipy_wilcoxon(d: list[float]) -> float:
    result = sp.wilcoxon(d, zero_method="wilcox", correction=False, method="approx")
    return float(result.pvalue)


@pytest.mark.parametrize("seed", range(4))
def test_wilcoxon_matches_scipy_with_ties_and_zeros(seed: int) -> None:
    rng = random.Random(seed)
    d = [round(rng.gauss(0.1 * seed, 1.0), 1) for _ in range(400)] + [0.0] * 7
    ours = stats.wilcoxon_signed_rank(d)
    reference = sp.wilcoxon(d, zero_method="wilcox", correction=False, method="approx")
    assert close(ours.p_value, float(reference.pvalue))
    assert ours.statistic == float(reference.statistic)


def test_wilcoxon_matches_scipy_on_a_large_shift() -> None:
    rng = random.Random(9)
    d = [rng.gauss(3.0, 2.0) for _ in range(20_000)]
    assert close(stats.wilcoxon_signed_rank(d).p_value, scipy_wilcoxon(d), rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=12, max_size=80).filter(lambda d: any(d)))
def test_wilcoxon_property_matches_scipy(d: list[int]) -> None:
    values = [float(v) for v in d]
    nonzero = [v for v in values if v]
    if len(set(abs(v) for v in nonzero)) == 1 and len(nonzero) == 1:
        return
    assert close(stats.wilcoxon_signed_rank(values).p_value, scipy_wilcoxon(values), rel=1e-9)


def test_average_ranks_match_scipy() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0]
    ranks, ties = stats.average_ranks(values)
    assert ranks == list(sp.rankdata(values))
    assert sorted(ties) == sorted([2, 2, 2, 1, 1, 1, 1])


# --- bootstrap -----------------------------------------------------------------------


def test_exact_median_bootstrap_equals_full_enumeration() -> None:
    values = [3.0, 1.0, 4.0, 1.5, 5.0]
    medians = sorted(sorted(s)[2] for s in itertools.product(values, repeat=len(values)))

    def quantile(q: float) -> float:  # the smallest resampled median with CDF >= q
        return medians[math.ceil(q * len(medians)) - 1]

    for confidence in (0.5, 0.8, 0.95):
        tail = (1 - confidence) / 2
        expected = (quantile(tail), quantile(1 - tail))
        assert stats.bootstrap_median_ci(values, confidence) == expected


def test_exact_median_bootstrap_agrees_with_resampling() -> None:
    rng = random.Random(3)
    data = [rng.expovariate(1.0) for _ in range(1001)]
    exact = stats.bootstrap_median_ci(data)
    resampled = stats.bootstrap_ci(data, stats.median, resamples=4000, seed=1)
    assert exact[0] == pytest.approx(resampled[0], rel=0.02)
    assert exact[1] == pytest.approx(resampled[1], rel=0.02)


def test_bootstrap_is_seeded_and_close_to_the_normal_interval() -> None:
    rng = random.Random(5)
    data = [rng.gauss(10.0, 2.0) for _ in range(800)]
    first = stats.bootstrap_ci(data, stats.mean, seed=7)
    assert first == stats.bootstrap_ci(data, stats.mean, seed=7)
    half = 1.96 * math.sqrt(sum((x - stats.mean(data)) ** 2 for x in data) / 799) / math.sqrt(800)
    assert first[0] == pytest.approx(stats.mean(data) - half, abs=half * 0.15)
    assert first[1] == pytest.approx(stats.mean(data) + half, abs=half * 0.15)


# --- multiple comparisons ------------------------------------------------------------


def test_holm_by_hand() -> None:
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> max(0.09, 0.08)=0.09, 0.2*1 = 0.2
    assert stats.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_bh_matches_scipy(p_values: list[float]) -> None:
    expected = sp.false_discovery_control(p_values, method="bh")
    assert stats.benjamini_hochberg(p_values) == pytest.approx(list(expected), abs=1e-12)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_holm_never_lowers_a_p_value_and_keeps_order(p_values: list[float]) -> None:
    adjusted = stats.holm(p_values)
    assert all(a >= p - 1e-15 and a <= 1.0 for a, p in zip(adjusted, p_values, strict=True))
    for (p1, a1), (p2, a2) in itertools.combinations(zip(p_values, adjusted, strict=True), 2):
        if p1 < p2:
            assert a1 <= a2


# --- power ---------------------------------------------------------------------------


def power_two_proportions(p1: float, p2: float, n1: int, n2: int, alpha: float = 0.05) -> float:
    pooled = (n1 * p1 + n2 * p2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    se1 = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return float(sp.norm.cdf((abs(p1 - p2) - sp.norm.ppf(1 - alpha) * se0) / se1))


def test_minimum_detectable_excess_has_80_percent_power() -> None:
    mde = stats.mde_two_proportions(0.004, 20_000, 20_000)
    assert power_two_proportions(0.004 + mde, 0.004, 20_000, 20_000) == pytest.approx(0.8, abs=1e-6)


def test_sample_size_for_two_proportions_textbook() -> None:
    # Fleiss: p1 = 0.10 vs p2 = 0.15, two-sided alpha 0.05, power 0.8 -> 686 per group.
    n = stats.n_two_proportions(0.10, 0.15, two_sided=True)
    assert math.ceil(n) == 686


def test_paired_proportions_mde_inverts_sample_size() -> None:
    mde = stats.mde_paired_proportions(0.1, 5000)
    assert stats.n_paired_proportions(0.1, mde) == pytest.approx(5000, rel=1e-6)
    za, zb = sp.norm.ppf(0.975), sp.norm.ppf(0.8)
    power = sp.norm.cdf((math.sqrt(5000) * mde - za * math.sqrt(0.1)) / math.sqrt(0.1 - mde**2))
    assert power == pytest.approx(0.8, abs=1e-6)
    assert zb == pytest.approx(stats.norm_ppf(0.8))


def test_paired_means_mde() -> None:
    expected = (sp.norm.ppf(0.975) + sp.norm.ppf(0.8)) * 2.0 / math.sqrt(400)
    assert stats.mde_paired_means(2.0, 400) == pytest.approx(expected, rel=1e-12)
    assert stats.n_paired_means(2.0, expected) == pytest.approx(400, rel=1e-12)


# --- purity --------------------------------------------------------------------------


def test_pure_modules_import_without_heavy_dependencies() -> None:
    code = (
        "import sys\n"
        "import shadowproxy.stats, shadowproxy.report.verdict, shadowproxy.report.svg\n"
        "heavy = {'scipy', 'numpy', 'duckdb', 'aiohttp', 'rich'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
