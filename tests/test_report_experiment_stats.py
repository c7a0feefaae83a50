"""The experiment statistics (t, chi-square, Mann-Whitney, arm sizes) against scipy.

scipy is the reference except where it is itself inexact (its Student t sf at df = 1
and t = 1e-8 is off by 3e-9), so df = 1 and 2 are also checked against closed forms.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sp

from shadowproxy import stats

REL = 1e-9
EXTREME_DF = [1.0, 2.0, 3.0, 2.5, 7.3, 30.0, 1e3, 1e6]


def close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)


def expand(counts: dict[int, int]) -> list[int]:
    return [value for value, count in counts.items() for _ in range(count)]


# --- Student's t ---------------------------------------------------------------------


@pytest.mark.parametrize("df", EXTREME_DF)
@pytest.mark.parametrize("t", [0.3, 1.0, 1.96, 3.0, 6.0, 12.0, 40.0, 1e3, -2.5])
def test_t_tails_match_scipy(t: float, df: float) -> None:
    assert close(stats.t_sf(t, df), sp.t.sf(t, df))
    assert close(stats.t_cdf(t, df), sp.t.cdf(t, df))


@pytest.mark.parametrize("df", EXTREME_DF)
@pytest.mark.parametrize("p", [1e-20, 1e-12, 1e-6])
def test_t_far_tail_matches_scipy(p: float, df: float) -> None:
    t = sp.t.isf(p, df)
    assert close(stats.t_sf(t, df), sp.t.sf(t, df))
    assert close(stats.t_sf(t, df), p, rel=1e-8)


@pytest.mark.parametrize("t", [1e-9, 1e-4, 0.5, 1.0, 7.0, 1e3, 1e10, 1e19, 1e100])
def test_t_matches_closed_forms_at_one_and_two_df(t: float) -> None:
    # df = 1 is the Cauchy distribution; df = 2 has sf = 1 / (r (r + t)), r = sqrt(2 + t^2).
    assert close(stats.t_sf(t, 1.0), math.atan(1.0 / t) / math.pi)
    r = math.sqrt(2.0 + t * t) if t < 1e100 else t
    assert close(stats.t_sf(t, 2.0), 1.0 / (r * (r + t)))


def test_t_is_symmetric_and_centred() -> None:
    assert stats.t_sf(0.0, 5.0) == 0.5
    assert stats.t_cdf(-1.7, 9.0) == stats.t_sf(1.7, 9.0)
    assert stats.t_sf(2.0, math.inf) == stats.norm_sf(2.0)
    assert math.isnan(stats.t_sf(math.nan, 4.0)) and math.isnan(stats.chi2_sf(math.nan, 4.0))
    with pytest.raises(ValueError, match="df > 0"):
        stats.t_sf(1.0, 0.0)


@pytest.mark.parametrize("df", EXTREME_DF)
@pytest.mark.parametrize("q", [1e-20, 1e-6, 0.005, 0.025, 0.2, 0.5, 0.8, 0.975, 0.995])
def test_t_quantile_matches_scipy(q: float, df: float) -> None:
    assert math.isclose(stats.t_ppf(q, df), sp.t.ppf(q, df), rel_tol=REL, abs_tol=1e-15)


# --- chi-square ----------------------------------------------------------------------


@pytest.mark.parametrize("df", [1.0, 2.0, 3.0, 4.0, 9.0, 30.0, 1e3, 1e6])
@pytest.mark.parametrize("p", [1e-20, 1e-8, 0.001, 0.05, 0.5, 0.95, 0.999])
def test_chi2_sf_matches_scipy(p: float, df: float) -> None:
    x = sp.chi2.isf(p, df)
    assert close(stats.chi2_sf(x, df), sp.chi2.sf(x, df))


@pytest.mark.parametrize("x", [1e-12, 0.01, 1.0, 3.84, 20.0, 90.0, 700.0])
def test_chi2_matches_closed_forms_at_one_and_two_df(x: float) -> None:
    assert close(stats.chi2_sf(x, 1.0), math.erfc(math.sqrt(x / 2.0)))
    assert close(stats.chi2_sf(x, 2.0), math.exp(-x / 2.0))


def test_chi2_sf_edges() -> None:
    assert stats.chi2_sf(0.0, 3.0) == 1.0
    assert stats.chi2_sf(math.inf, 3.0) == 0.0
    with pytest.raises(ValueError, match="df > 0"):
        stats.chi2_sf(1.0, -1.0)


# --- Welch ---------------------------------------------------------------------------

SUMMARIES = [
    (10.0, 4.0, 30, 11.0, 9.0, 45),
    (0.31, 0.2, 2158, 0.35, 0.5, 10),
    (3.0, 1.0, 2, 5.0, 2.0, 2),  # df between 1 and 2
    (3.0, 0.0, 40, 3.4, 1.5, 2),  # df exactly 1
    (100.0, 25.0, 500_000, 100.02, 25.0, 500_000),  # df near 1e6
    (100.0, 25.0, 500_000, 100.1, 25.0, 500_000),  # p near 1e-20
    (1.0, 1e-6, 3, 1.0001, 5.0, 1_000_000),
]


@pytest.mark.parametrize("summary", SUMMARIES)
def test_welch_matches_scipy(summary: tuple[float, float, int, float, float, int]) -> None:
    a_mean, a_var, a_n, b_mean, b_var, b_n = summary
    ours = stats.welch_t_test(*summary)
    reference = sp.ttest_ind_from_stats(
        a_mean, math.sqrt(a_var), a_n, b_mean, math.sqrt(b_var), b_n, equal_var=False
    )
    assert close(ours.statistic, reference.statistic)
    assert close(ours.p_value, reference.pvalue)
    va, vb = a_var / a_n, b_var / b_n
    assert close(ours.df, (va + vb) ** 2 / (va**2 / (a_n - 1) + vb**2 / (b_n - 1)))


def test_welch_tiny_p_value_and_huge_df() -> None:
    result = stats.welch_t_test(*SUMMARIES[5])
    assert 1e-25 < result.p_value < 1e-15
    assert 9.9e5 < result.df < 1e6


def test_welch_zero_variance_in_one_arm_leaves_the_other_arms_df() -> None:
    assert stats.welch_t_test(3.0, 0.0, 40, 3.4, 1.5, 12).df == pytest.approx(11.0, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_welch_on_raw_data_matches_scipy_ttest_ind(seed: int, confidence: float) -> None:
    rng = random.Random(seed)
    a = [rng.gauss(5.0, 1.0) for _ in range(25 + 40 * seed)]
    b = [rng.expovariate(0.2) for _ in range(60)]
    summary = (stats.mean(a), variance(a), len(a), stats.mean(b), variance(b), len(b))
    reference = sp.ttest_ind(a, b, equal_var=False)
    ours = stats.welch_t_test(*summary)
    assert close(ours.p_value, reference.pvalue)
    assert close(ours.df, reference.df)
    low, high = reference.confidence_interval(confidence)
    ours_low, ours_high = stats.welch_ci(*summary, confidence=confidence)
    assert close(ours_low, low) and close(ours_high, high)


def variance(values: list[float]) -> float:
    m = stats.mean(values)
    return math.fsum((v - m) ** 2 for v in values) / (len(values) - 1)


@pytest.mark.parametrize("summary", SUMMARIES[:5])
def test_welch_interval_touches_zero_at_the_p_value(
    summary: tuple[float, float, int, float, float, int],
) -> None:
    p = stats.welch_t_test(*summary).p_value
    low, high = stats.welch_ci(*summary, confidence=1.0 - p)
    assert min(abs(low), abs(high)) < 1e-9 * (high - low)


def test_welch_arm_without_a_variance_is_nan_not_an_error() -> None:
    result = stats.welch_t_test(1.0, 0.0, 1, 2.0, 1.0, 50)
    assert math.isnan(result.statistic) and math.isnan(result.p_value) and math.isnan(result.df)
    assert all(math.isnan(v) for v in stats.welch_ci(1.0, 0.5, 50, 2.0, 0.0, 0))


def test_welch_both_arms_constant() -> None:
    same = stats.welch_t_test(4.0, 0.0, 20, 4.0, 0.0, 30)
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    apart = stats.welch_t_test(4.0, 0.0, 20, 5.0, 0.0, 30)
    assert (apart.statistic, apart.p_value) == (-math.inf, 0.0)
    assert stats.welch_ci(4.0, 0.0, 20, 5.0, 0.0, 30) == (-1.0, -1.0)


def test_welch_negative_variance_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        stats.welch_t_test(1.0, -0.1, 10, 1.0, 1.0, 10)


# --- sample ratio mismatch -----------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "weights"),
    [
        ([5050, 4950], [1.0, 1.0]),
        ([49_500, 50_500], [0.5, 0.5]),
        ([5000, 5920], [0.5, 0.5]),  # p near 1e-18
        ([1000, 2100, 2900], [1.0, 2.0, 3.0]),
        ([9050, 950], [0.9, 0.1]),
        ([3, 1, 0, 2], [0.25, 0.25, 0.25, 0.25]),
    ],
)
def test_goodness_of_fit_matches_scipy(observed: list[int], weights: list[float]) -> None:
    expected = [sum(observed) * w / sum(weights) for w in weights]
    reference = sp.chisquare(observed, f_exp=expected)
    result = stats.chi_square_goodness_of_fit(observed, weights)
    assert close(result.statistic, reference.statistic)
    assert close(result.p_value, reference.pvalue)
    assert result.df == len(observed) - 1


def test_goodness_of_fit_flags_the_tiny_arm_trap() -> None:
    result = stats.chi_square_goodness_of_fit([2158, 10], [0.5, 0.5])
    assert result.p_value < 1e-300


def test_goodness_of_fit_arms_without_weight() -> None:
    paused = stats.chi_square_goodness_of_fit([480, 520, 0], [1.0, 1.0, 0.0])
    reference = sp.chisquare([480, 520])
    assert close(paused.p_value, reference.pvalue) and paused.df == 1
    leaking = stats.chi_square_goodness_of_fit([480, 520, 3], [1.0, 1.0, 0.0])
    assert (leaking.statistic, leaking.p_value, leaking.df) == (math.inf, 0.0, 2)
    alone = stats.chi_square_goodness_of_fit([700, 0], [1.0, 0.0])
    assert (alone.statistic, alone.p_value, alone.df) == (0.0, 1.0, 0)
    assert math.isnan(stats.chi_square_goodness_of_fit([0, 0], [1.0, 1.0]).p_value)


@pytest.mark.parametrize(
    ("observed", "weights", "message"),
    [
        ([10, 20], [1.0], "weight for each"),
        ([10], [1.0], "at least two"),
        ([10, -1], [1.0, 1.0], "negative"),
        ([10, 20], [1.0, -1.0], "weights must be"),
        ([10, 20], [0.0, 0.0], "weights must be"),
        ([10, 20], [1.0, math.nan], "weights must be"),
    ],
)
def test_goodness_of_fit_rejects_impossible_input(
    observed: list[int], weights: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        stats.chi_square_goodness_of_fit(observed, weights)


# --- independence --------------------------------------------------------------------


@pytest.mark.parametrize(
    "table",
    [
        [[70, 930], [40, 960]],
        [[12, 388], [9, 371]],
        [[9000, 1000], [8000, 2000]],  # p near 1e-80
        [[30, 70], [45, 55], [38, 62]],
        [[1, 99], [3, 97], [2, 98], [9, 91], [4, 96]],
        [[10, 20, 30], [20, 20, 20], [5, 30, 25]],
    ],
)
def test_independence_matches_scipy_without_correction(table: list[list[int]]) -> None:
    reference = sp.chi2_contingency(table, correction=False)
    result = stats.chi_square_independence(table)
    assert close(result.statistic, reference.statistic)
    assert close(result.p_value, reference.pvalue)
    assert result.df == reference.dof


def test_independence_two_by_two_is_the_pooled_z_test_squared() -> None:
    result = stats.chi_square_independence([[70, 930], [40, 960]])
    z = stats.two_proportion_z(70, 1000, 40, 1000)
    assert close(result.statistic, z.statistic**2) and close(result.p_value, z.p_value)


def test_independence_leaves_out_empty_rows_and_columns() -> None:
    with_empty = stats.chi_square_independence([[30, 70, 0], [0, 0, 0], [45, 55, 0]])
    assert with_empty == stats.chi_square_independence([[30, 70], [45, 55]])
    one_outcome = stats.chi_square_independence([[0, 500], [0, 20]])
    assert (one_outcome.statistic, one_outcome.p_value, one_outcome.df) == (0.0, 1.0, 0)
    assert math.isnan(stats.chi_square_independence([[30, 70], [0, 0]]).p_value)
    with pytest.raises(ValueError, match="same length"):
        stats.chi_square_independence([[1, 2], [3]])
    with pytest.raises(ValueError, match="negative"):
        stats.chi_square_independence([[1, 2], [3, -4]])


# --- Mann-Whitney --------------------------------------------------------------------


def likert(rng: random.Random, n: int, lean: float) -> dict[int, int]:
    weights = [1.0 + lean * (v - 3) for v in range(1, 6)]
    values = rng.choices(range(1, 6), weights=weights, k=n)
    return {v: values.count(v) for v in range(1, 6)}


def scipy_mann_whitney(a: dict[int, int], b: dict[int, int]) -> tuple[float, float]:
    reference = sp.mannwhitneyu(
        expand(a), expand(b), method="asymptotic", use_continuity=True, alternative="two-sided"
    )
    return float(reference.statistic), float(reference.pvalue)


@pytest.mark.parametrize(
    ("n1", "n2", "lean"), [(5, 7, 0.0), (40, 55, 0.1), (300, 280, 0.05), (20_000, 20_000, 0.2)]
)
def test_mann_whitney_matches_scipy_on_ratings(n1: int, n2: int, lean: float) -> None:
    rng = random.Random(n1)
    a, b = likert(rng, n1, lean), likert(rng, n2, 0.0)
    result = stats.mann_whitney_u(a, b)
    u, p = scipy_mann_whitney(a, b)
    assert result.statistic == u
    assert close(result.p_value, p)
    assert close(abs(result.z), sp.norm.isf(p / 2.0), rel=1e-8)


def test_mann_whitney_tiny_p_value() -> None:
    rng = random.Random(1)
    a, b = likert(rng, 20_000, 0.2), likert(rng, 20_000, -0.2)
    result = stats.mann_whitney_u(a, b)
    assert result.p_value < 1e-20 and result.z > 0
    assert close(result.p_value, scipy_mann_whitney(a, b)[1])


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(st.integers(1, 5), st.integers(0, 40), min_size=1),
    st.dictionaries(st.integers(1, 5), st.integers(0, 40), min_size=1),
)
def test_mann_whitney_property_matches_scipy(a: dict[int, int], b: dict[int, int]) -> None:
    pooled = set(expand(a) + expand(b))
    if not expand(a) or not expand(b) or len(pooled) < 2:
        return
    result = stats.mann_whitney_u(a, b)
    u, p = scipy_mann_whitney(a, b)
    assert result.statistic == u
    assert close(result.p_value, p)


def test_probability_of_superiority_counts_pairs() -> None:
    a, b = {1: 2, 3: 1, 5: 4}, {2: 3, 3: 2, 4: 1}
    pairs = [(x, y) for x in expand(a) for y in expand(b)]
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs)
    assert stats.mann_whitney_u(a, b).superiority == wins / len(pairs)
    assert stats.mann_whitney_u(b, a).superiority == (len(pairs) - wins) / len(pairs)


def test_mann_whitney_takes_pairs_and_sums_repeated_values() -> None:
    as_pairs = stats.mann_whitney_u([(1, 3), (4, 2), (1, 5)], [(2, 6), (5, 1)])
    assert as_pairs == stats.mann_whitney_u({1: 8, 4: 2}, {2: 6, 5: 1})


def test_mann_whitney_degenerate_arms() -> None:
    all_tied = stats.mann_whitney_u({3: 40}, {3: 25})
    assert (all_tied.z, all_tied.p_value, all_tied.superiority) == (0.0, 1.0, 0.5)
    assert math.isnan(stats.mann_whitney_u({3: 40}, {4: 0}).p_value)
    with pytest.raises(ValueError, match="count >= 0"):
        stats.mann_whitney_u({3: -1}, {4: 2})


# --- power ---------------------------------------------------------------------------


def test_sample_size_for_two_means_textbook() -> None:
    # A half-standard-deviation difference, two-sided 5%, power 80%: 63 per arm.
    n = stats.n_two_means(1.0, 0.5)
    assert math.ceil(n) == 63
    expected = 2 * (sp.norm.ppf(0.975) + sp.norm.ppf(0.8)) ** 2 / 0.25
    assert n == pytest.approx(expected, rel=1e-12)
    assert stats.n_two_means(1.0, 0.0) == math.inf


@pytest.mark.parametrize(("sd", "n", "n2"), [(1.0, 63, None), (12.5, 4000, None), (0.8, 900, 100)])
def test_mean_mde_has_the_requested_power(sd: float, n: int, n2: int | None) -> None:
    mde = stats.mde_two_means(sd, n, n2, alpha=0.01, power=0.9)
    se = sd * math.sqrt(1 / n + 1 / (n if n2 is None else n2))
    assert sp.norm.cdf(mde / se - sp.norm.ppf(0.995)) == pytest.approx(0.9, abs=1e-12)
    if n2 is None:
        assert stats.n_two_means(sd, mde, alpha=0.01, power=0.9) == pytest.approx(n, rel=1e-12)


def test_mean_mde_without_rows_is_nan() -> None:
    assert math.isnan(stats.mde_two_means(1.0, 0))
    assert math.isnan(stats.mde_two_means(1.0, 50, 0))


# --- arm sizes -----------------------------------------------------------------------


def test_tiny_arm_warning_on_the_2158_versus_10_trap() -> None:
    warning = stats.tiny_arm_warning({"control": 2158, "treatment": 10})
    assert warning is not None
    assert "'treatment' has 10 users" in warning
    assert "216 times" in warning
    assert "noise" in warning


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 5000, "b": 5100}, None),
        ({}, None),
        ({"a": 100, "b": 1000}, None),
        ({"a": 50, "b": 60}, "Tiny arms: 'a' has 50 users, 'b' has 60 users"),
        (
            {"a": 20_000, "b": 1000},
            "Unbalanced arms: 'a' has 20000 users, 20 times the 1000 of 'b'",
        ),
        ({"a": 500, "b": 0}, "'a' has 500 users and 'b' none"),
    ],
)
def test_tiny_arm_warning_cases(counts: dict[str, int], expected: str | None) -> None:
    warning = stats.tiny_arm_warning(counts)
    if expected is None:
        assert warning is None
    else:
        assert warning is not None and expected in warning


def test_tiny_arm_warning_thresholds_and_unit() -> None:
    warning = stats.tiny_arm_warning({"a": 40, "b": 45}, min_n=50, max_ratio=2.0, unit="requests")
    assert warning is not None and "'a' has 40 requests" in warning
    assert stats.tiny_arm_warning({"a": 40, "b": 75}, min_n=10, max_ratio=2.0) is None
    with pytest.raises(ValueError, match="negative"):
        stats.tiny_arm_warning({"a": -1})
