"""Guardrail tests: published reference values for the difference bounds, and the three
verdicts of each metric on clear, marginal and too-small windows."""

from __future__ import annotations

import json
import random

import pytest

from shadowproxy.experiments.guardrails import (
    check,
    check_disagreement,
    check_error_rate,
    check_p99_latency,
    rate_difference_bounds,
)
from shadowproxy.experiments.spec import GuardrailSpec
from shadowproxy.experiments.window import Window


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10.
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ],
)
def test_difference_bounds_match_newcombe(
    counts: tuple[int, int, int, int], expected: tuple[float, float]
) -> None:
    lower, upper = rate_difference_bounds(*counts, level=0.975)  # two 97.5% bounds = a 95% interval
    assert (round(lower, 4), round(upper, 4)) == expected


def window(
    cand: tuple[int, int], prod: tuple[int, int], compared: tuple[int, int] = (0, 0)
) -> Window:
    """A window with (requests, errors) per side and (compared, disagreed)."""
    result = Window(0)
    result.candidate.requests, result.candidate.errors = cand
    result.production.requests, result.production.errors = prod
    result.compared, result.disagreed = compared
    return result


def error_rate(cand: tuple[int, int], prod: tuple[int, int]) -> str:
    return check_error_rate(0.01, window(cand, prod), 0.95, 30).verdict


def test_error_rate_verdicts() -> None:
    assert error_rate((1000, 50), (99_000, 990)) == "fail"  # 5% vs 1%
    assert error_rate((1000, 10), (99_000, 990)) == "pass"  # equal
    assert error_rate((1000, 15), (99_000, 990)) == "undecided"  # +0.5%: within, not yet shown
    assert error_rate((20_000, 300), (80_000, 800)) == "pass"  # +0.5%, shown with more data
    assert error_rate((300, 15), (30_000, 300)) == "fail"  # a clear failure needs no step minimum
    assert error_rate((29, 29), (30_000, 300)) == "undecided"  # below guardrail_min_samples
    assert error_rate((1000, 10), (29, 0)) == "undecided"  # production too must have answered


def test_error_rate_evidence() -> None:
    result = check_error_rate(0.01, window((1000, 50), (99_000, 990)), 0.95, 30)
    assert result.evidence["candidate"] == {"requests": 1000, "errors": 50, "rate": 0.05}
    assert result.evidence["increase"] == pytest.approx(0.04)
    assert result.evidence["lower"] > 0.01 and result.evidence["verdict"] == "fail"
    assert result.reason.startswith(
        "error_rate: candidate 5.00% vs production 1.00%, increase 4.00% (95% bounds "
    )
    assert result.reason.endswith("exceeds max_increase 1.00%")
    too_few = check_error_rate(0.01, window((10, 1), (100, 1)), 0.95, 30)
    assert (
        too_few.reason
        == "error_rate: too few observations to decide (candidate 10, production 100; needs 30 each)"
    )


def test_disagreement_verdicts() -> None:
    def verdict(compared: int, disagreed: int) -> str:
        return check_disagreement(
            0.05, window((0, 0), (0, 0), (compared, disagreed)), 0.95, 30
        ).verdict

    assert verdict(1000, 100) == "fail"
    assert verdict(1000, 20) == "pass"
    assert verdict(1000, 45) == "undecided"
    assert verdict(20, 20) == "undecided"
    # Zero disagreements in 50 comparisons do not yet show a rate under 5%.
    assert verdict(50, 0) == "undecided" and verdict(100, 0) == "pass"


def latency_window(cand_n: int, cand_scale: float, prod_n: int, seed: int = 4) -> Window:
    rng = random.Random(seed)
    result = Window(0)
    for _ in range(cand_n):
        result.record("candidate", error=False, latency_ms=cand_scale * rng.lognormvariate(3, 0.5))
    for _ in range(prod_n):
        result.record("production", error=False, latency_ms=rng.lognormvariate(3, 0.5))
    return result


def test_p99_latency_verdicts() -> None:
    assert check_p99_latency(1.2, latency_window(1000, 1.6, 20_000), 0.95, 30).verdict == "fail"
    assert (
        check_p99_latency(1.2, latency_window(1000, 1.0, 20_000), 0.95, 30).verdict == "undecided"
    )
    assert check_p99_latency(1.2, latency_window(6000, 1.0, 20_000), 0.95, 30).verdict == "pass"
    assert check_p99_latency(1.2, latency_window(6000, 1.3, 20_000), 0.95, 30).verdict != "pass"
    # 200 latencies bound a p99 only from below: never a pass, a fail only if far out.
    assert check_p99_latency(1.2, latency_window(200, 1.0, 20_000), 0.95, 30).verdict == "undecided"
    assert check_p99_latency(1.2, latency_window(200, 5.0, 20_000), 0.95, 30).verdict == "fail"


def test_p99_latency_evidence_is_json_safe() -> None:
    result = check_p99_latency(1.2, latency_window(40, 1.0, 20_000), 0.95, 30)
    assert result.evidence["candidate"]["upper"] is None  # infinite: too few to bound above
    json.dumps(result.evidence, allow_nan=False)
    assert result.evidence["bound_level"] == pytest.approx(0.975)


def test_check_dispatches_on_the_metric() -> None:
    data = window((1000, 50), (99_000, 990), (1000, 100))
    specs = [
        GuardrailSpec(metric="error_rate", max_increase=0.01),
        GuardrailSpec(metric="disagreement", max=0.05),
        GuardrailSpec(metric="p99_latency_ms", max_increase_ratio=1.5),
    ]
    results = [check(spec, data, confidence=0.95, min_samples=30) for spec in specs]
    assert [(r.metric, r.verdict) for r in results] == [
        ("error_rate", "fail"),
        ("disagreement", "fail"),
        ("p99_latency_ms", "undecided"),  # no latencies recorded
    ]
