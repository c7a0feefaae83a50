"""Experiments in the report: did an arm change the outcome, and can the split be trusted?

Per experiment route (those with exposures), from the query results: per-arm sums
(``queries_runs.experiment_arms``) and value counts (``queries_runs.experiment_values``), and on
routes whose exposures name their assignment unit the same per unit
(``queries_runs.experiment_units``, ``queries_runs.experiment_unit_values``).

* Unit of analysis: the unit of randomisation. With sticky assignment by a key (the
  exposures carry ``unit``, a hash of e.g. the user id) a returning user's requests are
  correlated, and counting them as independent observations makes intervals too narrow
  and p-values too small. So each user is one observation, its outcome the mean of the
  user's requests' outcomes (for a binary outcome, the user's rate per request): every
  request weighs the same within a user, every user the same within an arm. A user
  seen in more than one arm means broken assignment, or shares that changed within the
  window; such users are counted, warned about and left out. Without units (random
  assignment) the request is the unit. Either way a request is an exposure without
  injected faults, its outcome the newest ``/feedback`` value of its request id
  (true/false count as 1/0; other labels are ignored and counted).
* Arms: on an A/B route the arms other than ``production`` (which answers outside the
  experiment's share); on a canary the candidate against ``production``. The control
  is the arm named ``control``, else ``production`` on a canary, else the first name.
* Kind, unless ``--outcome`` says, from the requests' outcomes: all 0 or 1 -> binary
  (two-proportion z, chi-square for more arms, Wilson and Newcombe intervals; per user
  only while every user's rate is 0 or 1, as with one request each, else Welch's t on
  the users' rates); integers with at most ``ORDINAL_MAX_VALUES`` distinct values ->
  ordinal (Mann-Whitney on the outcomes or the users' means, with the probability of
  superiority; means with t intervals beside it); else continuous (Welch's t and its
  interval of the difference).
* Sample ratio mismatch: users or requests per arm against the configured shares,
  chi-square goodness of fit; a mismatch at p < ``SRM_ALPHA`` (the usual threshold:
  with real traffic's large counts, a looser one would fire on noise-sized deviations).
* Power: observations per arm to detect ``--mde`` (relative to the control's mean) at
  alpha 0.05, two-sided, 80% power; and the relative effect the current arms detect.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shadowproxy import stats
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

PROPORTIONS, WELCH, MANN_WHITNEY = "proportions", "welch", "mann-whitney"
"""How arms are compared: it follows the kind, except that a binary outcome averaged
per user is a rate, compared with Welch's t once some user's rate is neither 0 nor 1."""


def build(
    arm_rows: Rows,
    value_rows: Rows,
    unit_rows: Sequence[dict[str, Any]] = (),
    unit_value_rows: Sequence[dict[str, Any]] = (),
    *,
    outcome: str,
    mde: float,
) -> list[Experiment]:
    """One experiment per route with two arms or more; routes with ``unit_rows`` are
    analysed per unit (user), the others per request."""
    by_route, units = _by_route(arm_rows), _by_route(unit_rows)
    values, unit_values = _values(value_rows), _values(unit_value_rows)
    out = []
    for route, rows in sorted(by_route.items()):
        chosen = choose_arms(rows)
        if chosen is None:
            continue
        design, ordered = chosen
        per_unit = None
        if route in units:
            per_unit = PerUnit(units[route], unit_values.get(route, {}))
        out.append(
            experiment(route, design, ordered, values.get(route, {}), outcome, mde, per_unit)
        )
    return out


def _by_route(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row["route"]].append(row)
    return out


def _values(rows: Sequence[dict[str, Any]]) -> Values:
    values: Values = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        values[row["route"]][row["arm"]][float(row["value"])] = int(row["n"])
    return values


@dataclass(frozen=True, slots=True)
class PerUnit:
    """A route's figures per unit: ``queries_runs.experiment_units`` rows (one per arm) and
    the value counts of the units' means."""

    rows: list[dict[str, Any]]
    values: dict[str, dict[float, int]]

    @property
    def several_arms(self) -> int:
        return sum(int(row["several_arms"]) for row in self.rows)

    def arms(self, rows: list[dict[str, Any]], kind: str | None) -> list[dict[str, Any]]:
        """``rows`` (per request) with the per-unit figures in their place: a unit is
        one observation, its outcome the mean of its requests' (for a binary outcome,
        their success rate)."""
        by_arm = {row["arm"]: row for row in self.rows}
        mean, variance = ("rate", "rate_variance") if kind == "binary" else ("mean", "variance")
        out = []
        for row in rows:
            unit = by_arm.get(row["arm"], {})
            out.append(
                row
                | {
                    "exposed": int(unit.get("units", 0)),
                    "with_outcome": int(unit.get("with_outcome", 0)),
                    "requests": int(unit.get("requests", 0)),
                    "mean": unit.get(mean),
                    "variance": float(unit.get(variance) or 0.0),
                    "successes": int(unit.get("successes", 0)),
                    "mixed": int(unit.get("mixed", 0)),
                }
            )
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
    per_unit: PerUnit | None = None,
) -> Experiment:
    has_outcomes = any(int(r["with_outcome"]) for r in rows)
    kind = (
        None if not has_outcomes else outcome if outcome in KINDS else detect_kind(values or None)
    )
    moved = any(r.get("share_min") != r.get("share_max") for r in rows)
    if per_unit is not None:
        rows, values = per_unit.arms(rows, kind), per_unit.values
    method = comparison_method(kind, rows)
    control, treatments = rows[0], rows[1:]
    arms = [_arm(control, method)]
    tests = [_compare(t, control, method, values) for t in treatments]
    adjusted = stats.holm([t[2] for t in tests]) if len(tests) > 1 else [t[2] for t in tests]
    for row, (diff, ci, _p, _test), p in zip(treatments, tests, adjusted, strict=True):
        arms.append(_arm(row, method, diff, ci, None if math.isnan(p) else p))
    test, difference, difference_ci = _overall(rows, method, tests)
    srm = sample_ratio(rows)
    unit = "request" if per_unit is None else "user"
    several = 0 if per_unit is None else per_unit.several_arms
    warnings = _warnings(route, rows, srm, has_outcomes, unit)
    if several:
        warnings = (_several_arms_warning(route, several, moved), *warnings)
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
        power=power(rows, method, mde),
        ignored=sum(int(r["ignored"]) for r in rows),
        warnings=warnings,
        unit=unit,
        units_in_several_arms=several,
    )


def comparison_method(kind: str | None, rows: list[dict[str, Any]]) -> str | None:
    """``PROPORTIONS``, ``WELCH`` or ``MANN_WHITNEY`` for ``kind`` (None: no outcomes).

    A binary outcome per user is a rate: while every user's is 0 or 1 (one request
    each, say) the two-proportion test applies to the users as it did to requests;
    once some user's rate lies in between, the rates are compared as means.
    """
    if kind == "binary":
        return WELCH if any(int(r.get("mixed", 0)) for r in rows) else PROPORTIONS
    if kind == "ordinal":
        return MANN_WHITNEY
    return None if kind is None else WELCH


def _arm(
    row: dict[str, Any],
    method: str | None,
    difference: float | None = None,
    difference_ci: Interval | None = None,
    p_value: float | None = None,
) -> ExperimentArm:
    n = int(row["with_outcome"])
    mean, ci = None, None
    if n and method == PROPORTIONS:
        mean = int(row["successes"]) / n
        ci = Interval(*stats.wilson_interval(int(row["successes"]), n))
    elif n and method is not None:
        mean = float(row["mean"])
        ci = _interval(stats.mean_ci(mean, float(row["variance"]), n))
    return ExperimentArm(
        name=row["arm"],
        exposed=int(row["exposed"]),
        with_outcome=n,
        requests=int(row.get("requests", row["exposed"])),
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
    method: str | None,
    values: dict[str, dict[float, int]],
) -> Comparison:
    n_t, n_c = int(treatment["with_outcome"]), int(control["with_outcome"])
    if method is None or not n_t or not n_c:
        return None, None, math.nan, None
    if method == PROPORTIONS:
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
    if method == MANN_WHITNEY:
        test = stats.mann_whitney_u(
            values.get(treatment["arm"], {}), values.get(control["arm"], {})
        )
    else:
        test = stats.welch_t_test(*summary)
    return diff, ci, test.p_value, test


def _overall(
    rows: list[dict[str, Any]], method: str | None, tests: list[Comparison]
) -> tuple[stats.TestResult | None, float | None, Interval | None]:
    if len(tests) == 1:
        diff, ci, _p, test = tests[0]
        return test, diff, ci
    if method == PROPORTIONS:
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


def power(rows: list[dict[str, Any]], method: str | None, mde: float) -> Power:
    control, treatments = rows[0], rows[1:]
    n_c = int(control["with_outcome"])
    n_t = min(int(r["with_outcome"]) for r in treatments)
    if method is None or not n_c or control["mean"] is None:
        return Power(mde, None, None)
    if method == PROPORTIONS:
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
    route: str, rows: list[dict[str, Any]], srm: SampleRatio, has_outcomes: bool, unit: str
) -> tuple[str, ...]:
    key = "with_outcome" if has_outcomes else "exposed"
    out = []
    tiny = stats.tiny_arm_warning({r["arm"]: int(r[key]) for r in rows}, unit=f"{unit}s")
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


def _several_arms_warning(route: str, several: int, moved: bool) -> str:
    users = f"{several:,} user{'s' if several != 1 else ''}"
    if moved:
        return (
            f"{users} of {route} were seen in more than one arm: the configured shares "
            "changed within the window (a canary step or new weights), which moves users "
            "between arms. They are left out of every figure; restrict --since/--until to "
            "one step to compare users who stayed."
        )
    return (
        f"{users} of {route} were seen in more than one arm under a fixed split: sticky "
        "assignment is broken, or the experiment's configuration changed within the "
        "window. They are left out of every figure; find the cause before trusting the "
        "comparison."
    )


def _split(observed: dict[str, int]) -> str:
    total = sum(observed.values()) or 1
    return "/".join(f"{100 * n / total:.1f}%" for n in observed.values())


def _shares(shares: dict[str, float]) -> str:
    return "/".join(f"{100 * s:.1f}%" for s in shares.values())


def _interval(bounds: tuple[float, float]) -> Interval | None:
    return None if math.isnan(bounds[0]) else Interval(*bounds)
