"""Simulated candidates with a known truth, to measure the decision's error rates.

Each dataset draws per-request outcomes for production, a baseline and a candidate
whose true differences from production are set by a :class:`Scenario` (accuracy shift,
excess disagreement, p99 ratio, error-rate increase), aggregates them exactly as the
report's queries would, and hands them to :func:`~shadowproxy.report.decision.decide`.
With every difference at zero the candidate replicates production (an A/A test): how
often it is rejected is the decision's false-alarm rate. With every difference at its
margin, how often it is rejected (Holm) or promoted (intersection-union) are the two
error rates at the boundary, and how often each bound covers the truth is the coverage
of the non-inferiority bounds.

``benchmarks/aa_decision.py`` prints these figures; a test runs a small version.
Deterministic for a given seed; pure Python (``random``), no I/O.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from shadowproxy.experiments.promotion import DEFAULT, Promotion
from shadowproxy.report import analysis, decision, groundtruth
from shadowproxy.report.model import (
    Interval,
    Labels,
    Latency,
    NoiseFloor,
    PairReport,
    Percentiles,
)

P99 = 0.99


@dataclass(frozen=True)
class Scenario:
    """The truth of one simulated candidate, relative to production."""

    requests: int = 4000
    labels: int = 1000
    prod_accuracy: float = 0.85
    discordance: float = 0.10
    """Share of labelled requests exactly one of the two models gets right."""
    accuracy_shift: float = 0.0
    baseline_disagreement: float = 0.02
    disagreement_excess: float = 0.0
    error_rate: float = 0.01
    error_increase: float = 0.0
    p99_ratio: float = 1.0
    latency_correlation: float = 0.5


def at_the_margins(promotion: Promotion = DEFAULT, **changes: float | int) -> Scenario:
    """A candidate exactly at every margin of ``promotion``."""
    base = Scenario(
        accuracy_shift=-promotion.accuracy.non_inferiority_margin,
        disagreement_excess=promotion.disagreement.max_excess_over_baseline,
        p99_ratio=promotion.latency_p99.max_ratio,
        error_increase=promotion.error_rate.max_increase,
    )
    return Scenario(**{**base.__dict__, **changes})


@dataclass
class Outcome:
    datasets: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    covered: Counter[str] = field(default_factory=Counter)
    """Per criterion: datasets whose worse-side one-sided 95% bound covers the truth."""

    def rate(self, status: str) -> float:
        return self.statuses[status] / self.datasets if self.datasets else math.nan

    def coverage(self, criterion: str) -> float:
        return self.covered[criterion] / self.datasets if self.datasets else math.nan


def run(
    scenario: Scenario, datasets: int, *, seed: int = 1, promotion: Promotion = DEFAULT
) -> Outcome:
    rng = random.Random(seed)
    outcome = Outcome()
    for _ in range(datasets):
        result = decision.decide(dataset(scenario, rng), promotion)
        outcome.datasets += 1
        outcome.statuses[result.status] += 1
        for criterion in result.criteria:
            if criterion.interval is not None and _covers(
                criterion.name, criterion.interval, scenario
            ):
                outcome.covered[criterion.name] += 1
    return outcome


def _covers(name: str, bounds: Interval, truth: Scenario) -> bool:
    """The bound on the worse side is on the right side of the true value."""
    if name == "accuracy":
        return bounds.lo <= truth.accuracy_shift
    if name == "disagreement":
        return bounds.hi >= truth.disagreement_excess
    if name == "latency_p99":
        return bounds.hi >= truth.p99_ratio
    if name == "error_rate":
        return bounds.hi >= truth.error_increase
    return False


def dataset(s: Scenario, rng: random.Random) -> PairReport:
    """One recording's aggregates for the candidate, as the report's queries give them."""
    labels = _labels(s, rng)
    disagreed = _count(rng, s.requests, s.baseline_disagreement + s.disagreement_excess)
    base_disagreed = _count(rng, s.requests, s.baseline_disagreement)
    prod_failed = _count(rng, s.requests, s.error_rate)
    cand_failed = _count(rng, s.requests, s.error_rate + s.error_increase)
    sample = _latencies(s, rng)
    prod_q = _p99(sorted(p for p, _ in sample))
    cand_q = _p99(sorted(c for _, c in sample))
    floor_rate = base_disagreed / s.requests
    return PairReport(
        route="sim",
        shadow="candidate",
        role="candidate",
        rows=s.requests,
        outcomes={"ok": s.requests, "error": 0, "timeout": 0, "dropped": 0, "skipped": 0},
        compared=s.requests,
        agreed=s.requests - disagreed,
        agreement_rate=1.0 - disagreed / s.requests,
        agreement_ci=None,
        comparator="label",
        prod_5xx_rate=None,
        shadow_5xx_rate=None,
        status_mismatch=0,
        latency=Latency(
            Percentiles(None, None, prod_q),
            Percentiles(None, None, cand_q),
            len(sample),
            len(sample),
            None,
            None,
            None,
            p99_log_se=analysis.p99_log_se(sample, len(sample)),
        ),
        noise_floor=NoiseFloor(
            ("baseline",), s.requests, base_disagreed, floor_rate, Interval(0, 1), None, None
        ),
        labels=labels,
        errors=(s.requests, cand_failed, prod_failed),
    )


def _p99(ordered: list[float]) -> float:
    """Type 7, as DuckDB's ``quantile_cont``."""
    position = P99 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _count(rng: random.Random, n: int, p: float) -> int:
    return sum(1 for _ in range(n) if rng.random() < p)


def _labels(s: Scenario, rng: random.Random) -> Labels:
    """Each labelled request falls in one of McNemar's four cells."""
    only_cand = (s.discordance + s.accuracy_shift) / 2.0
    only_prod = (s.discordance - s.accuracy_shift) / 2.0
    both = s.prod_accuracy - only_prod
    b = c = right_both = 0
    for _ in range(s.labels):
        u = rng.random()
        if u < only_prod:
            b += 1
        elif u < only_prod + only_cand:
            c += 1
        elif u < only_prod + only_cand + both:
            right_both += 1
    return groundtruth.classification_result(
        {
            "n": s.labels,
            "b": b,
            "c": c,
            "prod_right": right_both + b,
            "shadow_right": right_both + c,
        }
    )


def _latencies(s: Scenario, rng: random.Random) -> list[tuple[float, float]]:
    """Log-normal latencies, correlated per request; the candidate's are production's
    distribution scaled by ``p99_ratio``, so every quantile's true ratio is exactly that."""
    rho = s.latency_correlation
    out = []
    for _ in range(s.requests):
        shared, own = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
        prod = math.exp(3.0 + 0.5 * shared)
        cand = s.p99_ratio * math.exp(3.0 + 0.5 * (rho * shared + math.sqrt(1 - rho * rho) * own))
        out.append((prod, cand))
    return out
