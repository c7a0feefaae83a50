"""Chaos experiments in the report: which faults were injected, and were they noticed?

Rows that carry an injected fault (``chaos`` / ``prod_chaos`` columns, see
``shadowproxy.experiments.chaos``) are left out of every other figure: the ``scope`` view every
query reads has none of them. Here they are counted per pair, and each (route, target,
fault) gets one check: did the figure the fault should move actually move?

* ``delay``: the median latency of the delayed rows against the rows without faults
  (expected: higher by the delay);
* ``abort``: the share of the aborted rows recorded with the abort status (expected:
  all of them; the rows without faults give the usual share of that status);
* ``corrupt``: the disagreement of the corrupted rows that were compared (expected:
  every one; the rows without faults give the usual disagreement).

A check says "noticed" when the figure moved at least halfway from the rows without
faults to the expected value.
"""

from __future__ import annotations

from typing import Any

from shadowproxy.report.load import Rows
from shadowproxy.report.model import ChaosCheck

Key = tuple[str, str]

FAULTS = {"delay_ms": "delay", "abort_status": "abort", "corrupt_prediction": "corrupt"}
"""Marker words (``shadowproxy.experiments.chaos``) -> fault names (as in the metric's label)."""


def excluded(rows: Rows) -> dict[Key, int]:
    """Rows with injected faults per (route, shadow)."""
    return {(row["route"], row["shadow"]): int(row["excluded"]) for row in rows}


def checks(rows: Rows) -> list[ChaosCheck]:
    return [check(row) for row in rows]


def check(row: dict[str, Any]) -> ChaosCheck:
    fault = FAULTS.get(row["fault"], row["fault"])
    parameter = _number(row["param"])
    rows, clean_rows = int(row["rows"]), int(row["clean_rows"])
    if fault == "delay":
        measure, measured = "median latency", int(row["timed"])
        injected, clean = row["latency_p50"], row["clean_latency_p50"]
        expected = clean + parameter if clean is not None and parameter is not None else None
    elif fault == "abort":
        measure, measured = f"share with status {row['param']}", rows
        injected = _share(row["with_status"], rows)
        clean, expected = _share(row["clean_with_status"], clean_rows), 1.0
    else:
        measure, measured = "disagreement", int(row["compared"])
        injected = _share(row["disagreed"], measured)
        clean, expected = _share(row["clean_disagreed"], row["clean_compared"]), 1.0
    return ChaosCheck(
        route=row["route"],
        target=row["shadow"] if row["side"] == "shadow" else "production",
        fault=fault,
        parameter=parameter,
        rows=rows,
        measure=measure,
        measured=measured,
        injected=injected,
        clean=clean,
        clean_rows=clean_rows,
        expected=expected,
        noticed=noticed(injected, clean, expected),
    )


def noticed(injected: float | None, clean: float | None, expected: float | None) -> bool | None:
    """Did ``injected`` move at least halfway from ``clean`` towards ``expected``?"""
    if injected is None or clean is None or expected is None or expected <= clean:
        return None
    return injected - clean >= (expected - clean) / 2


def _share(part: Any, whole: Any) -> float | None:
    return int(part) / int(whole) if whole else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
