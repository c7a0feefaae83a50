"""What a statistical test returns, shared by every test in this package."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

Alternative = Literal["two-sided", "greater", "less"]


@dataclass(frozen=True, slots=True)
class TestResult:
    """A test's name, statistic and p-value, as the report and summary.json show them."""

    name: str
    statistic: float
    p_value: float


@dataclass(frozen=True, slots=True)
class DfTestResult(TestResult):
    """A t or chi-square test with its degrees of freedom, which belong in the answer:
    Welch's df falls towards n - 1 of the arm with the noisier mean, usually the
    smaller arm, so a tiny arm shows up there even when the p-value looks fine."""

    df: float


@dataclass(frozen=True, slots=True)
class MannWhitneyResult(TestResult):
    """Mann-Whitney U with the z behind its p-value and the probability of superiority
    ``P(A > B) + P(A = B) / 2``, the effect size in the test's own terms: a difference
    of mean 1-5 ratings would treat the steps between ratings as equal."""

    z: float
    superiority: float


ValueCounts: TypeAlias = Mapping[int, int] | Mapping[float, int] | Iterable[tuple[float, int]]
"""How often each value occurs in an arm, as the report's ``GROUP BY value`` returns it."""
