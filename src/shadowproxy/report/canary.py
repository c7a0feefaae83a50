"""The canary section: a canary route's recorded decisions, read back from the state file
the proxy keeps (``state_dir/canary-<route>.json``, found through ``--config``).

:func:`history` is pure (the file's parsed JSON in, a
:class:`~shadowproxy.report.model.CanaryHistory` out); :func:`read` is the one place that
opens the file. Each decision keeps the evidence it was taken on: the step's requests
and every guardrail's figure, bounds, limit and verdict.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shadowproxy.report.model import CanaryHistory, CanaryStep, GuardrailFigure
from shadowproxy.report.options import ReportInputError

VALUE_KEYS = {"error_rate": "increase", "p99_latency_ms": "ratio", "disagreement": "rate"}
"""Where each guardrail's evidence keeps its figure (``guardrails.check_*``)."""


def read(route: str, path: str) -> CanaryHistory | None:
    """The route's canary history, or None when the proxy has not written a state file
    there (yet). A file that is not a canary state is bad input, named."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportInputError(f"cannot read canary state {path}: {exc.strerror or exc}") from None
    try:
        return history(route, json.loads(text), path)
    except (ValueError, KeyError, TypeError) as exc:
        raise ReportInputError(f"canary state {path} is not readable: {exc}") from None


def history(route: str, data: dict[str, Any], source: str) -> CanaryHistory:
    last = data.get("last_evaluation")
    return CanaryHistory(
        route=route,
        candidate=str(data["candidate"]),
        status=str(data["status"]),
        percent=float(data["percent"]),
        steps=tuple(step(d) for d in data["decisions"]),
        last_evaluation=step(last) if isinstance(last, dict) else None,
        source=source,
    )


def step(decision: dict[str, Any]) -> CanaryStep:
    evidence = decision.get("evidence") or {}
    return CanaryStep(
        at=datetime.fromtimestamp(float(decision["at"]), UTC),
        action=str(decision["action"]),
        by=str(decision["by"]),
        from_percent=float(decision["from_percent"]),
        percent=float(decision["percent"]),
        status=str(decision["status"]),
        reasons=tuple(str(r) for r in decision.get("reasons", ())),
        candidate_requests=_int(evidence.get("candidate_requests")),
        production_requests=_int(evidence.get("production_requests")),
        guardrails=tuple(figure(g) for g in evidence.get("guardrails", ()) if isinstance(g, dict)),
    )


def figure(evidence: dict[str, Any]) -> GuardrailFigure:
    metric = str(evidence.get("metric"))
    key = VALUE_KEYS.get(metric, "")
    lower = evidence.get("ratio_lower" if metric == "p99_latency_ms" else "lower")
    upper = evidence.get("ratio_upper" if metric == "p99_latency_ms" else "upper")
    return GuardrailFigure(
        metric=metric,
        verdict=str(evidence.get("verdict")),
        value=_float(evidence.get(key)),
        lower=_float(lower),
        upper=_float(upper),
        limit=_float(evidence.get("limit")),
        observations=_observations(metric, evidence),
    )


def _observations(metric: str, evidence: dict[str, Any]) -> str:
    if metric == "disagreement":
        return f"{_int(evidence.get('compared')) or 0:,} compared answers"
    sides = []
    for side in ("candidate", "production"):
        value = evidence.get(side)
        n = value.get("requests", value.get("n")) if isinstance(value, dict) else None
        n = n if n is not None else evidence.get(f"{side}_n")
        sides.append(f"{side} {_int(n) or 0:,}")
    return " / ".join(sides) + " requests"


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None
