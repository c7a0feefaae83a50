"""Where two reports differ, field by field: the comparison both Spark parity tests
make (DuckDB's answer against Spark's), strict about types and tolerant only of the
last bits of a float."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

RELATIVE_TOLERANCE = 1e-9
"""Floats are equal when within this share of the larger magnitude (the issue's
contract). Both engines compute sums of decimals exactly and quantiles by the same
interpolation, so what is left is the last bits of a double: a division or a square
root done in the JVM instead of in C (the largest seen is 8e-15, on a p-value). There is
no absolute tolerance: 0.0 against 1e-17 is a difference, as a relative bound says."""

DIFFERS_BY_DESIGN: Mapping[tuple[str, ...], str] = {
    ("generated_at",): "the moment each report was made",
}
"""Fields whose values legitimately differ between the two runs, each with why. A path
is keys from the top; ``*`` stands for any list index."""


def differences(
    expected: Any,
    actual: Any,
    path: tuple[str, ...] = (),
    exempt: Mapping[tuple[str, ...], str] = DIFFERS_BY_DESIGN,
) -> list[str]:
    """Every place where ``actual`` differs from ``expected``, as ``path: expected !=
    actual`` lines. Floats are equal within :data:`RELATIVE_TOLERANCE`; everything else
    must be equal and of the same type (a count that comes back as ``3.0`` instead of
    ``3`` is a difference: summary.json's readers see it); dicts must have the same keys
    and lists (or tuples) the same length, compared in order. Paths in ``exempt`` are skipped,
    with ``*`` matching any list index."""
    if _exempt(path, exempt):
        return []
    where = "/".join(path) or "(top)"
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(set(expected) | set(actual), key=str):
            step = str(key)
            if _exempt((*path, step), exempt):
                continue
            if key not in actual or key not in expected:
                side = "spark" if key not in expected else "duckdb"
                found.append(f"{where}/{step}: only in {side}'s summary")
                continue
            found += differences(expected[key], actual[key], (*path, step), exempt)
        return found
    if isinstance(expected, list | tuple) and type(expected) is type(actual):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items != {len(actual)} items"]
        found = []
        for index, (a, b) in enumerate(zip(expected, actual, strict=True)):
            found += differences(a, b, (*path, str(index)), exempt)
        return found
    if isinstance(expected, float) and isinstance(actual, float):
        return [] if _close(expected, actual) else [f"{where}: {expected!r} != {actual!r}"]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{where}: {expected!r} != {actual!r}"]
    return []


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE)


def _exempt(path: tuple[str, ...], exempt: Mapping[tuple[str, ...], str]) -> bool:
    for pattern in exempt:
        if len(pattern) == len(path) and all(
            (p == "*" and step.isdigit()) or p == step
            for p, step in zip(pattern, path, strict=True)
        ):
            return True
    return False
