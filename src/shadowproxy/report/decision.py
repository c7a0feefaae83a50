"""PROMOTE, HOLD or REJECT: each candidate judged on its route's pre-registered criteria.

Every criterion is a non-inferiority question about one quantity with a margin from
the route's ``promotion:`` block (:mod:`shadowproxy.experiments.promotion`): is the
candidate at most that much worse than production? Each quantity has an estimate and
one-sided bounds at a level ``L``; the result is

- ``pass`` when the bound on the worse side clears the margin at ``1 - ALPHA``
  (non-inferiority shown: a bare "not significant" would not be evidence);
- ``fail`` when the bound on the better side is past the margin at the Holm-adjusted
  level (inferiority beyond the margin shown);
- ``open`` otherwise, with the labels or requests that would settle it at the current
  estimate.

Each p-value is the inversion of the same bounds (the smallest alpha at which the
bound clears the margin), so a p-value and an interval can never disagree. The
decision: REJECT when any criterion fails, PROMOTE when all pass, HOLD otherwise.
PROMOTE is an intersection-union test (each criterion at ``ALPHA``: promoting a
candidate that breaks one criterion has probability at most ``ALPHA``); REJECT is a
union, so the fail tests are Holm-corrected across the criteria (rejecting a candidate
that meets every criterion has probability at most ``ALPHA``).

Pure: plain numbers from :class:`~shadowproxy.report.model.PairReport` in, a
:class:`~shadowproxy.report.model.Decision` out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from shadowproxy.experiments.guardrails import one_sided_wilson, rate_difference_bounds
from shadowproxy.experiments.promotion import ALPHA, DEFAULT, Promotion
from shadowproxy.report import intervals
from shadowproxy.report.model import Criterion, Decision, Interval, PairReport
from shadowproxy.stats import holm
from shadowproxy.stats.distributions import norm_ppf

Bounds = Callable[[float], tuple[float, float]]
"""One-sided (lower, upper) bounds, each at the given level in [0.5, 1)."""

STATUS_ORDER = ("PROMOTE", "HOLD", "REJECT")
"""From best to worst: with several candidates the worst decides the gate."""
EXIT_CODES = {"PROMOTE": 0, "HOLD": 3, "REJECT": 4}
LEVEL = 1.0 - ALPHA
MAX_NEEDED = 1e12
"""Beyond this many observations an open criterion is said to sit on its margin."""
_TINY = 1e-15
P_BISECTIONS = 36
"""Halvings of log(alpha) over [log 1e-15, 0]: p to better than 1e-9 relative."""


@dataclass(frozen=True)
class _Question:
    """One criterion before it is judged."""

    name: str
    estimate: float | None
    bounds: Bounds | None
    margin: float
    higher_is_better: bool
    """``True``: the estimate must stay above the margin (accuracy difference);
    ``False``: below it (excess disagreement, latency ratio, error-rate increase)."""
    unit: str
    n: int
    test: str
    floor: int = 0
    """Observations required before the criterion may be decided (``min_labels``)."""


def decide_all(pairs: Iterable[PairReport], promotions: Mapping[str, Promotion]) -> None:
    """Set ``decision`` on every candidate, with its route's criteria (the defaults when
    the route has no ``promotion:`` block or no config was given)."""
    for pair in pairs:
        if pair.role != "baseline":
            pair.decision = decide(pair, promotions.get(pair.route, DEFAULT))


def decide(pair: PairReport, promotion: Promotion) -> Decision:
    questions = [
        _accuracy(pair, promotion),
        _disagreement(pair, promotion),
        _latency_p99(pair, promotion),
        _error_rate(pair, promotion),
    ]
    return judge(questions)


def judge(questions: list[_Question]) -> Decision:
    """Pass tests at ``ALPHA`` each; fail tests Holm-adjusted across the criteria."""
    decidable = [q for q in questions if q.bounds is not None and q.n >= q.floor]
    fail_p = holm([_p_value(q, fail=True) for q in decidable]) if decidable else []
    adjusted = dict(zip((q.name for q in decidable), fail_p, strict=True))
    criteria = tuple(_criterion(q, adjusted.get(q.name)) for q in questions)
    if any(c.result == "fail" for c in criteria):
        status = "REJECT"
    elif all(c.result == "pass" for c in criteria):
        status = "PROMOTE"
    else:
        status = "HOLD"
    return Decision(status=status, criteria=criteria, sentence=sentence(status, criteria))


def _criterion(q: _Question, p_fail: float | None) -> Criterion:
    if q.bounds is None or q.estimate is None:
        return Criterion(
            name=q.name,
            estimate=None,
            interval=None,
            p_value=None,
            p_fail=None,
            margin=q.margin,
            result="open",
            test=q.test,
            unit=q.unit,
            needed=q.floor - q.n if q.floor > q.n else None,
            higher_is_better=q.higher_is_better,
        )
    lower, upper = q.bounds(LEVEL)
    p_pass = _p_value(q, fail=False)
    result = "open"
    if q.n >= q.floor:
        if p_pass < ALPHA:
            result = "pass"
        elif p_fail is not None and p_fail < ALPHA:
            result = "fail"
    needed = _needed(q, lower, upper) if result == "open" else None
    return Criterion(
        name=q.name,
        estimate=q.estimate,
        interval=Interval(lower, upper),
        p_value=p_pass,
        p_fail=p_fail,
        margin=q.margin,
        result=result,
        test=q.test,
        unit=q.unit,
        needed=needed,
        higher_is_better=q.higher_is_better,
    )


def _p_value(q: _Question, *, fail: bool) -> float:
    """The smallest alpha at which the relevant bound, at level ``1 - alpha``, clears
    the margin: the inversion of the bounds, so p < alpha exactly when it clears.

    Pass tests use the bound on the worse side (the candidate is no worse than the
    margin allows); fail tests the bound on the better side (it is worse)."""
    assert q.bounds is not None
    bounds = q.bounds
    worse_is_lower = q.higher_is_better

    def bound(level: float) -> float:
        """The one-sided bound at any level in (0, 1): below 1/2 a lower bound is the
        upper bound at ``1 - level`` and vice versa."""
        use_lower = worse_is_lower != fail
        if level >= 0.5:
            lo, hi = bounds(level)
            return lo if use_lower else hi
        lo, hi = bounds(1.0 - level)
        return hi if use_lower else lo

    def clears(level: float) -> bool:
        value = bound(level)
        beyond_good_side = value > q.margin if q.higher_is_better else value < q.margin
        return not beyond_good_side if fail else beyond_good_side

    if clears(1.0 - _TINY):
        return _TINY
    if not clears(_TINY):
        return 1.0
    # Bisect on log(alpha): p-values matter to a few significant digits at any size.
    low, high = math.log(_TINY), 0.0  # clears at level 1 - e^high, not at 1 - e^low
    for _ in range(P_BISECTIONS):
        middle = (low + high) / 2.0
        if clears(1.0 - math.exp(middle)):
            high = middle
        else:
            low = middle
    return math.exp(high)


def _needed(q: _Question, lower: float, upper: float) -> int | None:
    """More observations for the bound to reach the margin at the current estimate:
    an interval narrows as one over the square root of n."""
    assert q.estimate is not None
    distance = abs(q.margin - q.estimate)
    near = lower if (q.estimate > q.margin) else upper
    half = abs(q.estimate - near)
    more = q.floor - q.n
    ratio = half / distance if distance > 0 else math.inf
    total = q.n * ratio * ratio if ratio < MAX_NEEDED else math.inf
    if total < MAX_NEEDED:
        more = max(more, math.ceil(total) - q.n)
    elif q.floor <= q.n:
        return None  # the estimate sits on the margin: no sample size settles it
    return max(more, 1)


# --- the four criteria ---------------------------------------------------------------


def _accuracy(pair: PairReport, promotion: Promotion) -> _Question:
    margin = promotion.accuracy.non_inferiority_margin
    labels = pair.labels
    if labels is None or labels.n == 0:
        return _Question(
            "accuracy", None, None, -margin, True, "labels", 0, "no labels", promotion.min_labels
        )
    if labels.task == "regression":
        return _mae(pair, promotion)
    b, c = labels.discordant or (0, 0)
    n = labels.n

    def bounds(level: float) -> tuple[float, float]:
        return intervals.paired_accuracy_ci(b, c, n, 2.0 * level - 1.0)

    return _Question(
        "accuracy",
        labels.difference,
        bounds,
        -margin,
        True,
        "labels",
        n,
        "exact McNemar (Clopper-Pearson) bounds",
        promotion.min_labels,
    )


def _mae(pair: PairReport, promotion: Promotion) -> _Question:
    """Regression: the MAE may grow by at most the margin's share of production's MAE."""
    labels = pair.labels
    assert labels is not None
    prod_mae = labels.production.get("mae")
    limit = promotion.accuracy.non_inferiority_margin * (
        prod_mae if isinstance(prod_mae, float) else 0.0
    )
    sd = labels.error_sd
    n = labels.n
    if sd is None or n < 2:
        return _Question(
            "mae", None, None, limit, False, "labels", n, "paired t", promotion.min_labels
        )
    mean, variance = labels.difference, sd * sd

    def bounds(level: float) -> tuple[float, float]:
        return intervals.paired_t(mean, variance, n, 2.0 * level - 1.0).ci

    return _Question(
        "mae", mean, bounds, limit, False, "labels", n, "paired t bounds", promotion.min_labels
    )


def _disagreement(pair: PairReport, promotion: Promotion) -> _Question:
    disagreed, n = pair.compared - pair.agreed, pair.compared
    floor = pair.noise_floor
    if n == 0:
        return _Question(
            "disagreement",
            None,
            None,
            promotion.disagreement.max,
            False,
            "requests",
            0,
            "no compared answers",
        )
    if floor is None:

        def absolute(level: float) -> tuple[float, float]:
            return one_sided_wilson(disagreed, n, level)

        return _Question(
            "disagreement",
            disagreed / n,
            absolute,
            promotion.disagreement.max,
            False,
            "requests",
            n,
            "Wilson bounds (no baseline: absolute max)",
        )

    def excess(level: float) -> tuple[float, float]:
        return rate_difference_bounds(disagreed, n, floor.disagreed, floor.compared, level)

    return _Question(
        "disagreement",
        disagreed / n - floor.rate,
        excess,
        promotion.disagreement.max_excess_over_baseline,
        False,
        "requests",
        n,
        "Newcombe bounds of the excess over the baseline",
    )


def _latency_p99(pair: PairReport, promotion: Promotion) -> _Question:
    """The ratio of p99s over every pair, with log-scale bounds whose standard error
    comes from the order-statistic intervals of each side's p99 in the hash sample
    (scaled to the full count; sides treated as independent, which is conservative
    when latencies move together)."""
    latency = pair.latency
    limit = promotion.latency_p99.max_ratio
    prod, cand, se = latency.production.p99, latency.shadow.p99, latency.p99_log_se
    if prod is None or cand is None or se is None or prod <= 0 or cand <= 0:
        return _Question(
            "latency_p99",
            None,
            None,
            limit,
            False,
            "requests",
            latency.pairs,
            "too few answered requests",
        )
    ratio = cand / prod
    sampled = latency.sample < latency.pairs

    def bounds(level: float) -> tuple[float, float]:
        spread = norm_ppf(level) * se
        return (ratio * math.exp(-spread), ratio * math.exp(spread))

    test = "log-ratio bounds"
    if sampled:
        test += f" (spread from a hash sample of {latency.sample:,})"
    return _Question("latency_p99", ratio, bounds, limit, False, "requests", latency.pairs, test)


def _error_rate(pair: PairReport, promotion: Promotion) -> _Question:
    sent, shadow_failed, prod_failed = pair.errors
    limit = promotion.error_rate.max_increase
    if sent == 0:
        return _Question("error_rate", None, None, limit, False, "requests", 0, "no copies sent")

    def bounds(level: float) -> tuple[float, float]:
        return rate_difference_bounds(shadow_failed, sent, prod_failed, sent, level)

    estimate = (shadow_failed - prod_failed) / sent
    return _Question(
        "error_rate", estimate, bounds, limit, False, "requests", sent, "Newcombe bounds"
    )


# --- words ---------------------------------------------------------------------------


def sentence(status: str, criteria: Iterable[Criterion]) -> str:
    """One sentence a decision-maker can act on."""
    items = list(criteria)
    if status == "PROMOTE":
        return "PROMOTE: every criterion passes (one-sided 95% bounds inside every margin)."
    if status == "REJECT":
        failed = "; ".join(criterion_text(c) for c in items if c.result == "fail")
        return f"REJECT: {failed}."
    open_ = "; ".join(open_text(c) for c in items if c.result == "open")
    return f"HOLD: not enough evidence yet: {open_}."


def open_text(c: Criterion) -> str:
    if c.estimate is None:
        more = f", needs {c.needed:,} {c.unit}" if c.needed else ""
        return f"{c.name} has no data yet ({c.test}{more})"
    if c.needed is None:
        return f"{c.name} sits on its margin (more data will not settle it soon)"
    return f"{c.name} needs ~{c.needed:,} more {c.unit}"


def value_text(name: str, value: float | None) -> str:
    """A criterion's estimate or bound in its own unit."""
    if value is None or not math.isfinite(value):
        return "undefined"
    if name == "accuracy":
        return f"{100 * value:+.2f} pts"
    if name in ("disagreement", "error_rate"):
        return f"{100 * value:+.2f} pts"
    if name == "latency_p99":
        return f"x{value:.3f}"
    return f"{value:+.4g}"


def criterion_text(c: Criterion, *, detail: bool = False) -> str:
    """``accuracy -2.10 pts [-3.00, -1.20] vs margin -1.00 pts: fail``; with ``detail``
    also the test and its p-value, and what an open criterion needs."""
    if c.estimate is None or c.interval is None:
        return f"{c.name}: open, no data ({open_text(c)})" if detail else f"{c.name}: no data"
    text = (
        f"{c.name} {value_text(c.name, c.estimate)} "
        f"[{value_text(c.name, c.interval.lo)}, {value_text(c.name, c.interval.hi)}] "
        f"vs margin {value_text(c.name, c.margin)}: {c.result}"
    )
    if not detail:
        return text
    p = "n/a" if c.p_value is None else _p(c.p_value)
    text += f" ({c.test}; non-inferiority {p})"
    return text + (f"; {open_text(c)}" if c.result == "open" else "")


def _p(p: float) -> str:
    return "p<0.0001" if p < 0.0001 else f"p={p:.2g}" if p < 0.1 else f"p={p:.2f}"


def worst(statuses: Iterable[str]) -> str | None:
    ranked = sorted(statuses, key=STATUS_ORDER.index)
    return ranked[-1] if ranked else None
