"""Typed rules checked on every watched request and answer, no expression language.

A rule targets the request body (every value its ``path`` matches) or a side's
prediction (every row, ``observe.rows``). A request or answer that breaks a rule counts
once for it, however many of its values broke it, so rates are per request. A path that
matches nothing checks nothing: an absent optional field is not a violation (write a
``length`` rule on its parent to require it). A value of the wrong type for a rule (a
string under ``min``, a number under ``length``) breaks it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shadowproxy.compare import jsonpath
from shadowproxy.monitor.observe import is_number, rows
from shadowproxy.monitor.spec import InvariantSpec, Scalar


@dataclass(frozen=True, slots=True)
class Invariant:
    """A compiled ``monitor.invariants`` entry."""

    spec: InvariantSpec
    path: jsonpath.JsonPath | None

    @classmethod
    def build(cls, spec: InvariantSpec) -> Invariant:
        return cls(spec, None if spec.path is None else jsonpath.parse(spec.path))

    @property
    def name(self) -> str:
        return self.spec.name

    def holds_for(self, value: Any) -> bool:
        """Whether one matched value (or one prediction row) keeps the rule."""
        spec = self.spec
        if spec.allowed is not None:
            return _is_in(value, spec.allowed)
        if spec.length is not None:
            return isinstance(value, list | str | dict) and len(value) == spec.length
        if spec.sum is not None:
            return _sums_to(value, spec.sum, spec.tolerance)
        return _within(value, spec.min, spec.max)


def build(specs: Sequence[InvariantSpec]) -> tuple[Invariant, ...]:
    return tuple(Invariant.build(spec) for spec in specs)


def request_violations(rules: Sequence[Invariant], request: Any) -> list[str]:
    """Names of the request rules the parsed request body breaks, in config order."""
    broken = []
    for rule in rules:
        if rule.spec.target != "request" or rule.path is None:
            continue
        if not all(rule.holds_for(value) for value in rule.path.find(request)):
            broken.append(rule.name)
    return broken


def prediction_violations(rules: Sequence[Invariant], prediction: Any) -> list[str]:
    """Names of the prediction rules one side's extracted prediction breaks."""
    broken = []
    for rule in rules:
        if rule.spec.target != "prediction":
            continue
        checked = [prediction] if rule.spec.sum is not None and _flat(prediction) else None
        if not all(rule.holds_for(row) for row in checked or rows(prediction)):
            broken.append(rule.name)
    return broken


def _flat(prediction: Any) -> bool:
    """A flat list of numbers is one row to a ``sum`` rule (a single distribution)."""
    return isinstance(prediction, list) and bool(prediction) and all(map(is_number, prediction))


def _is_in(value: Any, allowed: tuple[Scalar, ...]) -> bool:
    # ``True == 1`` in Python; in JSON they are different values.
    return any(
        value == item and isinstance(value, bool) == isinstance(item, bool) for item in allowed
    )


def _sums_to(value: Any, total: float, tolerance: float) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list) or not value or not all(map(is_number, value)):
        return False
    return abs(math.fsum(value) - total) <= tolerance


def _within(value: Any, low: float | None, high: float | None) -> bool:
    numbers = _numbers(value)
    if numbers is None or not numbers:
        return False
    return (low is None or min(numbers) >= low) and (high is None or max(numbers) <= high)


def _numbers(value: Any) -> list[float] | None:
    """Every number in a value (a row may be ``[2.5]``); None if anything else is there."""
    if is_number(value):
        return [float(value)]
    if isinstance(value, list):
        out: list[float] = []
        for item in value:
            inner = _numbers(item)
            if inner is None:
                return None
            out.extend(inner)
        return out
    return None
