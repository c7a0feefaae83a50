"""Ground truth: production and each shadow against the labels, paired per request.

Classification (labels are class names or ids) compares accuracy on the same labeled
requests with an exact McNemar test and the interval built from it
(:func:`~shadowproxy.report.intervals.paired_accuracy_ci`); regression (numeric labels
and predictions) compares MAE and RMSE with a paired t test on the per-request
difference of absolute errors, whose mean is the MAE difference, and its t interval,
over every labelled request. Each request counts once (see ``queries.labeled_pairs``).
Both report the minimum detectable difference at 80% power and, when the result is not
significant, how many more labels would detect a difference of the observed size.
"""

from __future__ import annotations

import math
from typing import Any

from shadowproxy import stats
from shadowproxy.report import intervals, queries
from shadowproxy.report.engines import Runner
from shadowproxy.report.model import Interval, Labels, PairReport
from shadowproxy.report.options import ReportOptions

Key = tuple[str, str]

ALPHA = 0.05
CLASS_KINDS = ("label", "probabilities")


def add_labels(pairs: dict[Key, PairReport], runner: Runner, options: ReportOptions) -> None:
    rows = {
        (r["route"], r["shadow"]): r for r in runner.rows(queries.labeled_pairs(runner.dialect))
    }
    for key, row in rows.items():
        if key not in pairs:
            continue
        task = choose_task(pairs[key].comparator, row)
        if task == "classification":
            pairs[key].labels = classification_result(row)
        elif task == "regression":
            pairs[key].labels = regression_result(row)


def choose_task(comparator: str, row: dict[str, Any]) -> str | None:
    """Regression when the pair is compared numerically, or when a pair without a class
    comparator has numbers for labels that are not all integers; classification
    otherwise (integer labels are class ids)."""
    n = int(row["n"])
    if n == 0:
        return None
    numeric = int(row["numeric_labels"]) == n and int(row["n_reg"]) > 0
    if comparator == "numeric" and numeric:
        return "regression"
    if comparator not in CLASS_KINDS and numeric and int(row["fractional_labels"]) > 0:
        return "regression"
    return "classification"


def classification_result(row: dict[str, Any]) -> Labels:
    n, b, c = int(row["n"]), int(row["b"]), int(row["c"])
    prod_right, shadow_right = int(row["prod_right"]), int(row["shadow_right"])
    difference = (c - b) / n
    test = stats.mcnemar_exact(b, c)
    discordant = (b + c) / n
    mde = stats.mde_paired_proportions(discordant, n) if discordant else math.nan
    needed = None
    if test.p_value >= ALPHA and difference:
        needed = _more(stats.n_paired_proportions(discordant, abs(difference)), n)
    return Labels(
        task="classification",
        n=n,
        production=_accuracy(prod_right, n),
        shadow=_accuracy(shadow_right, n),
        test=test,
        difference=difference,
        difference_ci=Interval(*intervals.paired_accuracy_ci(b, c, n)),
        mde=_finite(mde),
        more_labels_needed=needed,
        duplicates=int(row.get("duplicates") or 0),
        discordant=(b, c),
    )


def _accuracy(right: int, n: int) -> dict[str, float | list[float] | None]:
    return {
        "accuracy": right / n,
        "accuracy_ci95": list(stats.wilson_interval(right, n)),
        "correct": right,
    }


def regression_result(row: dict[str, Any]) -> Labels:
    n = int(row["n_reg"])
    prod_mae, shadow_mae = row["prod_abs"] / n, row["shadow_abs"] / n
    mean, variance = intervals.moments(n, row["d_sum"], row["d_sq"]) or (
        float(row["d_sum"] or 0.0) / max(n, 1),
        0.0,
    )
    paired = intervals.paired_t(mean, variance, n)
    sd = math.sqrt(variance) if n > 1 else math.nan
    difference = paired.mean
    needed = None
    if not paired.test.p_value < ALPHA and difference and sd > 0:
        needed = _more(stats.n_paired_means(sd, abs(difference)), n)
    return Labels(
        task="regression",
        n=n,
        production={"mae": prod_mae, "rmse": math.sqrt(row["prod_sq"] / n)},
        shadow={"mae": shadow_mae, "rmse": math.sqrt(row["shadow_sq"] / n)},
        test=paired.test,
        difference=difference,
        difference_ci=Interval(*paired.ci) if n > 1 else None,
        mde=_finite(stats.mde_paired_means(sd, n)) if sd > 0 else None,
        more_labels_needed=needed,
        duplicates=int(row.get("duplicates") or 0),
        error_sd=sd if n > 1 else None,
    )


def _more(required: float, n: int) -> int | None:
    if not math.isfinite(required):
        return None
    return max(0, math.ceil(required) - n)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
