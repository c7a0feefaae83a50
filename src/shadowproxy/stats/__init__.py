"""Pure statistics shared by the live experiments and the offline report.

Nothing here touches files, DuckDB or the clock, and nothing needs scipy or numpy at
run time (scipy is a dev dependency: the tests check every p-value against it). The
callers hand these functions aggregated counts or a capped sample, so pure Python is
fast enough.

Conventions: ``alternative="greater"`` means "the first proportion is larger";
p-values of two-sided tests are capped at 1; every function is deterministic
(bootstrap resampling takes a seed). Too little data is an answer, not an error: a
test on an empty arm returns NaN, which the report shows as "too few". Exceptions are
kept for input no data could produce (negative counts, a ragged table).

One module per family (``proportions``, ``means``, ``ranks``, ``contingency``,
``descriptive``, ``multiple``, ``power``; the tails of the normal, t and chi-square
distributions in ``distributions``); the package exports them all, so callers write
``from shadowproxy import stats`` and ``stats.wilson_interval(...)``.
"""

from shadowproxy.stats.contingency import chi_square_goodness_of_fit, chi_square_independence
from shadowproxy.stats.descriptive import (
    bootstrap_ci,
    bootstrap_median_ci,
    mean,
    median,
    require_finite,
)
from shadowproxy.stats.distributions import (
    chi2_sf,
    norm_cdf,
    norm_ppf,
    norm_sf,
    t_cdf,
    t_isf,
    t_ppf,
    t_sf,
    z_for,
)
from shadowproxy.stats.means import mean_ci, welch_ci, welch_t_test
from shadowproxy.stats.multiple import benjamini_hochberg, holm
from shadowproxy.stats.power import (
    mde_paired_means,
    mde_paired_proportions,
    mde_two_means,
    mde_two_proportions,
    n_paired_means,
    n_paired_proportions,
    n_two_means,
    n_two_proportions,
    tiny_arm_warning,
)
from shadowproxy.stats.proportions import (
    binom_cdf,
    binom_upper_tail,
    mcnemar_exact,
    paired_proportion_diff_ci,
    proportion_diff_ci,
    two_proportion_z,
    wilson_interval,
)
from shadowproxy.stats.ranks import average_ranks, mann_whitney_u, wilcoxon_signed_rank
from shadowproxy.stats.results import (
    Alternative,
    DfTestResult,
    MannWhitneyResult,
    TestResult,
    ValueCounts,
)

__all__ = [
    "Alternative",
    "DfTestResult",
    "MannWhitneyResult",
    "TestResult",
    "ValueCounts",
    "average_ranks",
    "benjamini_hochberg",
    "binom_cdf",
    "binom_upper_tail",
    "bootstrap_ci",
    "bootstrap_median_ci",
    "chi2_sf",
    "chi_square_goodness_of_fit",
    "chi_square_independence",
    "holm",
    "mann_whitney_u",
    "mcnemar_exact",
    "mde_paired_means",
    "mde_paired_proportions",
    "mde_two_means",
    "mde_two_proportions",
    "mean",
    "mean_ci",
    "median",
    "n_paired_means",
    "n_paired_proportions",
    "n_two_means",
    "n_two_proportions",
    "norm_cdf",
    "norm_ppf",
    "norm_sf",
    "paired_proportion_diff_ci",
    "proportion_diff_ci",
    "require_finite",
    "t_cdf",
    "t_isf",
    "t_ppf",
    "t_sf",
    "tiny_arm_warning",
    "two_proportion_z",
    "welch_ci",
    "welch_t_test",
    "wilcoxon_signed_rank",
    "wilson_interval",
    "z_for",
]
