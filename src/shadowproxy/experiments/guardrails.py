"""The guardrail tests: does the candidate pass, fail, or is it too early to say?

Each guardrail compares the candidate with production over the same window and returns
one of three verdicts, each backed by one-sided bounds at the level it is given (the
canary's ``confidence``, or a stricter level at an advance look: ``canary.advance_level``):

- ``fail``: the data show, at that level, that the candidate is worse than the
  limit allows (its *best* plausible value is past the limit);
- ``pass``: the data show it is within the limit (its *worst* plausible value is within);
- ``undecided``: neither yet, including any window with fewer than
  ``guardrail_min_samples`` observations on a side the test needs.

Rules, per metric:

- ``error_rate``: the difference of rates (candidate - production) with Newcombe's
  hybrid score bounds (from Wilson intervals: good coverage at rates near 0, unlike the
  Wald interval). Fail when the lower bound > ``max_increase``; pass when the upper
  bound <= ``max_increase``.
- ``p99_latency_ms``: distribution-free order-statistic bounds of each side's p99 from
  its histogram, read at bucket edges (conservative). Two bounds are combined, so each
  is taken at ``1 - (1 - confidence) / 2`` (Bonferroni). Fail when candidate lower >
  ratio x production upper; pass when candidate upper <= ratio x production lower.
- ``disagreement``: the Wilson bound of the disagreement rate on the compared sample.
  Fail when the lower bound > ``max``; pass when the upper bound <= ``max``.

Figures go into ``evidence`` as JSON-safe values (infinite or undefined bounds are None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from shadowproxy.experiments.spec import GuardrailSpec, Metric
from shadowproxy.experiments.window import SideStats, Window
from shadowproxy.stats import wilson_interval

Verdict = Literal["pass", "fail", "undecided"]
P99 = 0.99
_WORDS: dict[Verdict, str] = {"fail": "exceeds", "pass": "is within", "undecided": "may exceed"}


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """One guardrail's verdict, the sentence explaining it, and the figures behind it."""

    metric: Metric
    verdict: Verdict
    reason: str
    evidence: dict[str, Any]


def check(
    guardrail: GuardrailSpec, window: Window, *, confidence: float, min_samples: int
) -> GuardrailResult:
    """Run the test of ``guardrail.metric`` on ``window``."""
    if guardrail.metric == "error_rate":
        return check_error_rate(guardrail.limit, window, confidence, min_samples)
    if guardrail.metric == "p99_latency_ms":
        return check_p99_latency(guardrail.limit, window, confidence, min_samples)
    return check_disagreement(guardrail.limit, window, confidence, min_samples)


def one_sided_wilson(successes: int, n: int, level: float) -> tuple[float, float]:
    """Wilson bounds each one-sided at ``level`` (the two-sided interval at 2 level - 1)."""
    return wilson_interval(successes, n, 2.0 * level - 1.0)


def rate_difference_bounds(x1: int, n1: int, x2: int, n2: int, level: float) -> tuple[float, float]:
    """Newcombe's hybrid score bounds for p1 - p2, each one-sided at ``level``."""
    p1, p2 = x1 / n1, x2 / n2
    low1, high1 = one_sided_wilson(x1, n1, level)
    low2, high2 = one_sided_wilson(x2, n2, level)
    diff = p1 - p2
    lower = diff - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2)
    upper = diff + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2)
    return lower, upper


def _verdict(lower: float, upper: float, limit: float) -> Verdict:
    if lower > limit:
        return "fail"
    if upper <= limit:
        return "pass"
    return "undecided"


def _too_few(
    metric: Metric, counts: dict[str, int], min_samples: int, limit: float
) -> GuardrailResult | None:
    short = {side: n for side, n in counts.items() if n < min_samples}
    if not short:
        return None
    listed = ", ".join(f"{side} {n}" for side, n in counts.items())
    return GuardrailResult(
        metric,
        "undecided",
        f"{metric}: too few observations to decide ({listed}; needs {min_samples} each)",
        {
            "metric": metric,
            "limit": limit,
            "verdict": "undecided",
            **{f"{side}_n": n for side, n in counts.items()},
        },
    )


def _side(stats: SideStats) -> dict[str, Any]:
    return {"requests": stats.requests, "errors": stats.errors, "rate": _num(_rate(stats))}


def _rate(stats: SideStats) -> float:
    return stats.errors / stats.requests if stats.requests else math.nan


def check_error_rate(
    limit: float, window: Window, confidence: float, min_samples: int
) -> GuardrailResult:
    cand, prod = window.candidate, window.production
    counts = {"candidate": cand.requests, "production": prod.requests}
    if (early := _too_few("error_rate", counts, min_samples, limit)) is not None:
        return early
    lower, upper = rate_difference_bounds(
        cand.errors, cand.requests, prod.errors, prod.requests, confidence
    )
    verdict = _verdict(lower, upper, limit)
    diff = _rate(cand) - _rate(prod)
    words = _WORDS[verdict]
    reason = (
        f"error_rate: candidate {_pct(_rate(cand))} vs production {_pct(_rate(prod))}, "
        f"increase {_pct(diff)} ({_level(confidence)} bounds {_pct(lower)} .. {_pct(upper)}) "
        f"{words} max_increase {_pct(limit)}"
    )
    evidence = {
        "metric": "error_rate",
        "limit": limit,
        "verdict": verdict,
        "confidence": confidence,
        "candidate": _side(cand),
        "production": _side(prod),
        "increase": _num(diff),
        "lower": _num(lower),
        "upper": _num(upper),
    }
    return GuardrailResult("error_rate", verdict, reason, evidence)


def check_p99_latency(
    limit: float, window: Window, confidence: float, min_samples: int
) -> GuardrailResult:
    cand, prod = window.candidate.latency, window.production.latency
    counts = {"candidate": cand.count, "production": prod.count}
    if (early := _too_few("p99_latency_ms", counts, min_samples, limit)) is not None:
        return early
    level = 1.0 - (1.0 - confidence) / 2.0
    cand_low, cand_high = cand.quantile_bounds(P99, level)
    prod_low, prod_high = prod.quantile_bounds(P99, level)
    verdict: Verdict = "undecided"
    if cand_low > limit * prod_high:
        verdict = "fail"
    elif cand_high <= limit * prod_low:
        verdict = "pass"
    words = _WORDS[verdict]
    reason = (
        f"p99_latency_ms: candidate {cand.quantile(P99):.1f} ms "
        f"({_ms(cand_low)} .. {_ms(cand_high)}) vs production {prod.quantile(P99):.1f} ms "
        f"({_ms(prod_low)} .. {_ms(prod_high)}); "
        f"the ratio {words} max_increase_ratio {limit:g}"
    )
    evidence = {
        "metric": "p99_latency_ms",
        "limit": limit,
        "verdict": verdict,
        "confidence": confidence,
        "bound_level": level,
        "candidate": {
            "n": cand.count,
            "p99_ms": _num(cand.quantile(P99)),
            "lower": _num(cand_low),
            "upper": _num(cand_high),
        },
        "production": {
            "n": prod.count,
            "p99_ms": _num(prod.quantile(P99)),
            "lower": _num(prod_low),
            "upper": _num(prod_high),
        },
        "ratio": _num(cand.quantile(P99) / prod.quantile(P99)),
        "ratio_lower": _num(cand_low / prod_high if prod_high > 0 else math.nan),
        "ratio_upper": _num(cand_high / prod_low if prod_low > 0 else math.inf),
    }
    return GuardrailResult("p99_latency_ms", verdict, reason, evidence)


def check_disagreement(
    limit: float, window: Window, confidence: float, min_samples: int
) -> GuardrailResult:
    n, x = window.compared, window.disagreed
    if (early := _too_few("disagreement", {"compared": n}, min_samples, limit)) is not None:
        return early
    lower, upper = one_sided_wilson(x, n, confidence)
    verdict = _verdict(lower, upper, limit)
    words = _WORDS[verdict]
    reason = (
        f"disagreement: {x} of {n} compared answers ({_pct(x / n)}; {_level(confidence)} bounds "
        f"{_pct(lower)} .. {_pct(upper)}) {words} max {_pct(limit)}"
    )
    evidence = {
        "metric": "disagreement",
        "limit": limit,
        "verdict": verdict,
        "confidence": confidence,
        "compared": n,
        "disagreed": x,
        "rate": _num(x / n),
        "lower": _num(lower),
        "upper": _num(upper),
    }
    return GuardrailResult("disagreement", verdict, reason, evidence)


def _num(value: float) -> float | None:
    """JSON-safe and short: 6 significant digits, None for NaN and infinities."""
    if math.isnan(value) or math.isinf(value):
        return None
    return float(f"{value:.6g}")


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _ms(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def _level(confidence: float) -> str:
    """95%, 97.5%, 99.375%: as many digits as the level has, no more."""
    return f"{confidence * 100:.6g}%"
