"""Experiments in the report: did an arm change the outcome, and can the split be trusted?

Per experiment route (those with exposures), from two query results: per-arm sums
(``queries.experiment_arms``) and per-arm value counts (``queries.experiment_values``).
The unit is the request: one exposure without injected faults is one observation, its
outcome the newest ``/feedback`` value of its request id (true/false count as 1/0;
other labels are ignored and counted).

* Arms: on an A/B route the arms other than ``production`` (which answers outside the
  experiment's share); on a canary the candidate against ``production``. The control
  is the arm named ``control``, else ``production`` on a canary, else the first name.
* Kind, unless ``--outcome`` says: all outcomes 0 or 1 -> binary (two-proportion z,
  chi-square for more arms, Wilson and Newcombe intervals); integers with at most
  ``ORDINAL_MAX_VALUES`` distinct values -> ordinal (Mann-Whitney, with the
  probability of superiority; means with t intervals beside it); else continuous
  (Welch's t and its interval of the difference).
* Sample ratio mismatch: exposures per arm against the configured shares, chi-square
  goodness of fit; a mismatch at p < ``SRM_ALPHA`` (the usual threshold: with real
  traffic's large counts, a looser one would fire on noise-sized deviations).
* Power: outcomes per arm to detect ``--mde`` (relative to the control's mean) at
  alpha 0.05, two-sided, 80% power; and the relative effect the current arms detect.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from shadowproxy.report import stats
from shadowproxy.report.load import Rows
from shadowproxy.report.model import Experiment, ExperimentArm, Interval, Power, SampleRatio

PRODUCTION = "production"
CONTROL = "control"
KINDS = ("binary", "continuous", "ordinal")
ORDINAL_MAX_VALUES = 10
SRM_ALPHA = 0.001
ALPHA = 0.05

Values = dict[str, dict[str, dict[float, int]]]
"""route -> arm -> outcome value -> count."""


def build(arm_rows: Rows, value_rows: Rows, *, outcome: str, mde: float) -> list[Experiment]:
    by_route: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in arm_rows:
        by_route[row["route"]].append(row)
    values: Values = defaultdict(lambda: defaultdict(dict))
    for row in value_rows:
        values[row["route"]][row["arm"]][float(row["value"])] = int(row["n"])
    out = []
    for route, rows in sorted(by_route.items()):
        chosen = choose_arms(rows)
        if chosen is not None:
            design, ordered = chosen
            out.append(experiment(route, design, ordered, values.get(route, {}), outcome, mde))
    return out


def choose_arms(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]] | None:
    """The design and the compared arms' rows, control first; None with one arm."""
    names = {row["arm"] for row in rows}
    others = [row for row in rows if row["arm"] != PRODUCTION]
    if len(others) >= 2:
        design, compared = "ab", others
    elif others and PRODUCTION in names:
        design, compared = "canary", rows
    else:
        return None
    fallback = PRODUCTION if design == "canary" else min(r["arm"] for r in compared)
    control = CONTROL if CONTROL in {r["arm"] for r in compared} else fallback
    return design, sorted(compared, key=lambda r: (r["arm"] != control, r["arm"]))


def detect_kind(counts: dict[str, dict[float, int]] | None) -> str:
    """binary / ordinal / continuous from the value counts (None: too many values)."""
    if counts is None:
        return "continuous"
    seen = {value for arm in counts.values() for value in arm}
    if seen <= {0.0, 1.0}:
        return "binary"
    if all(value.is_integer() for value in seen) and len(seen) <= ORDINAL_MAX_VALUES:
        return "ordinal"
    return "continuous"


def experiment(
    route: str,
    design: str,
    rows: list[dict[str, Any]],
    values: dict[str, dict[float, int]],
    outcome: str,
    mde: float,
) -> Experiment:
    has_outcomes = any(int(r["with_outcome"]) for r in rows)
    kind = (
        None if not has_outcomes else outcome if outcome in KINDS else detect_kind(values or None)
    )
    control, treatments = rows[0], rows[1:]
    arms = [_arm(control, kind)]
    tests = [_compare(t, control, kind, values) for t in treatments]
    adjusted = stats.holm([t[2] for t in tests]) if len(tests) > 1 else [t[2] for t in tests]
    for row, (diff, ci, _p, _test), p in zip(treatments, tests, adjusted, strict=True):
        arms.append(_arm(row, kind, diff, ci, None if math.isnan(p) else p))
    test, difference, difference_ci = _overall(rows, kind, tests)
    srm = sample_ratio(rows)
    warnings = _warnings(route, rows, srm, has_outcomes)
    return Experiment(
        route=route,
        design=design,
        kind=kind,
        control=control["arm"],
        arms=tuple(arms),
        test=test,
        difference=difference,
        difference_ci=difference_ci,
        srm=srm,
        power=power(rows, kind, mde),
        ignored=sum(int(r["ignored"]) for r in rows),
        warnings=warnings,
    )


def _arm(
    row: dict[str, Any],
    kind: str | None,
    difference: float | None = None,
    difference_ci: Interval | None = None,
    p_value: float | None = None,
) -> ExperimentArm:
    n = int(row["with_outcome"])
    mean, ci = None, None
    if n and kind == "binary":
        mean = int(row["successes"]) / n
        ci = Interval(*stats.wilson_interval(int(row["successes"]), n))
    elif n and kind is not None:
        mean = float(row["mean"])
        ci = _interval(stats.mean_ci(mean, float(row["variance"]), n))
    return ExperimentArm(
        name=row["arm"],
        exposed=int(row["exposed"]),
        with_outcome=n,
        mean=mean,
        ci=ci,
        share=row["share"],
        difference=difference,
        difference_ci=difference_ci,
        p_value=p_value,
    )


Comparison = tuple[float | None, Interval | None, float, stats.TestResult | None]
"""(difference, its interval, raw p-value, the test) of one treatment against control."""


def _compare(
    treatment: dict[str, Any],
    control: dict[str, Any],
    kind: str | None,
    values: dict[str, dict[float, int]],
) -> Comparison:
    n_t, n_c = int(treatment["with_outcome"]), int(control["with_outcome"])
    if kind is None or not n_t or not n_c:
        return None, None, math.nan, None
    if kind == "binary":
        x_t, x_c = int(treatment["successes"]), int(control["successes"])
        test: stats.TestResult = stats.two_proportion_z(x_t, n_t, x_c, n_c)
        diff = x_t / n_t - x_c / n_c
        return diff, _interval(stats.proportion_diff_ci(x_t, n_t, x_c, n_c)), test.p_value, test
    summary = (
        float(treatment["mean"]),
        float(treatment["variance"]),
        n_t,
        float(control["mean"]),
        float(control["variance"]),
        n_c,
    )
    diff, ci = summary[0] - summary[3], _interval(stats.welch_ci(*summary))
    if kind == "ordinal":
        test = stats.mann_whitney_u(
            values.get(treatment["arm"], {}), values.get(control["arm"], {})
        )
    else:
        test = stats.welch_t_test(*summary)
    return diff, ci, test.p_value, test


def _overall(
    rows: list[dict[str, Any]], kind: str | None, tests: list[Comparison]
) -> tuple[stats.TestResult | None, float | None, Interval | None]:
    if len(tests) == 1:
        diff, ci, _p, test = tests[0]
        return test, diff, ci
    if kind == "binary":
        table = [[int(r["successes"]), int(r["with_outcome"]) - int(r["successes"])] for r in rows]
        return stats.chi_square_independence(table), None, None
    return None, None, None


def sample_ratio(rows: list[dict[str, Any]]) -> SampleRatio:
    observed = {r["arm"]: int(r["exposed"]) for r in rows}
    shares = [r["share"] for r in rows]
    note = ""
    if any(share is None for share in shares):
        shares = [1.0] * len(rows)
        note = "no configured share recorded (an older recording): checked against equal shares"
    elif any(r["share_min"] != r["share_max"] for r in rows):
        moved = ", ".join(
            f"{r['arm']} {r['share_min']:g}-{r['share_max']:g}"
            for r in rows
            if r["share_min"] != r["share_max"]
        )
        return SampleRatio(
            observed,
            _normalised(rows, shares),
            None,
            None,
            f"not tested: the configured share changed within the window ({moved}); "
            "restrict --since/--until to one step",
        )
    expected = _normalised(rows, shares)
    if sum(observed.values()) == 0 or not any(shares):
        return SampleRatio(observed, expected, None, None, note or "no exposures")
    test = stats.chi_square_goodness_of_fit(list(observed.values()), shares)
    mismatch = None if math.isnan(test.p_value) else test.p_value < SRM_ALPHA
    return SampleRatio(observed, expected, test, mismatch, note)


def _normalised(rows: list[dict[str, Any]], shares: list[float]) -> dict[str, float]:
    total = math.fsum(shares)
    return {r["arm"]: (s / total if total else math.nan) for r, s in zip(rows, shares, strict=True)}


def power(rows: list[dict[str, Any]], kind: str | None, mde: float) -> Power:
    control, treatments = rows[0], rows[1:]
    n_c = int(control["with_outcome"])
    n_t = min(int(r["with_outcome"]) for r in treatments)
    if kind is None or not n_c or control["mean"] is None:
        return Power(mde, None, None)
    if kind == "binary":
        base = int(control["successes"]) / n_c
        target = base * (1.0 + mde)
        needed = stats.n_two_proportions(base, target, two_sided=True) if target < 1 else math.nan
        current = stats.mde_two_proportions(base, n_t, n_c, two_sided=True) if n_t else math.nan
    else:
        base = float(control["mean"])
        sd = _pooled_sd(rows)
        needed = stats.n_two_means(sd, mde * abs(base)) if sd > 0 else math.nan
        current = stats.mde_two_means(sd, n_c, n_t) if n_t else math.nan
    return Power(
        mde,
        math.ceil(needed) if math.isfinite(needed) else None,
        current / abs(base) if base and math.isfinite(current) else None,
    )


def _pooled_sd(rows: list[dict[str, Any]]) -> float:
    freedom = sum(max(int(r["with_outcome"]) - 1, 0) for r in rows)
    if freedom <= 0:
        return math.nan
    pooled = math.fsum(
        max(int(r["with_outcome"]) - 1, 0) * float(r["variance"] or 0.0) for r in rows
    )
    return math.sqrt(pooled / freedom)


def _warnings(
    route: str, rows: list[dict[str, Any]], srm: SampleRatio, has_outcomes: bool
) -> tuple[str, ...]:
    key = "with_outcome" if has_outcomes else "exposed"
    out = []
    tiny = stats.tiny_arm_warning({r["arm"]: int(r[key]) for r in rows}, unit="requests")
    if tiny:
        out.append(tiny)
    if srm.mismatch:
        assert srm.test is not None
        out.append(
            f"Sample ratio mismatch on {route}: the observed split "
            f"{_split(srm.observed)} does not match the configured "
            f"{_shares(srm.expected_shares)} (p = {srm.test.p_value:.2g} < {SRM_ALPHA:g}). "
            "Assignment or logging is broken: do not trust the comparison."
        )
    if not has_outcomes:
        out.append(f"No outcomes for {route}: POST them to /feedback with the request ids.")
    return tuple(out)


def _split(observed: dict[str, int]) -> str:
    total = sum(observed.values()) or 1
    return "/".join(f"{100 * n / total:.1f}%" for n in observed.values())


def _shares(shares: dict[str, float]) -> str:
    return "/".join(f"{100 * s:.1f}%" for s in shares.values())


def _interval(bounds: tuple[float, float]) -> Interval | None:
    return None if math.isnan(bounds[0]) else Interval(*bounds)
