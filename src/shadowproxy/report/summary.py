"""``summary.json``: the report's numbers for machines (CI gates, dashboards).

The keys listed in docs/report.md (``summary.json``) are a contract; keys may be
added, never renamed or removed. Missing values are ``null`` (never NaN, which is not
JSON), rates are fractions and latencies milliseconds.
"""

from __future__ import annotations

import json
import math
from typing import Any

from shadowproxy.report.model import (
    CanaryHistory,
    CanaryStep,
    ChaosCheck,
    Criterion,
    Decision,
    Experiment,
    ExperimentArm,
    Interval,
    Labels,
    Latency,
    NoiseFloor,
    PairReport,
    Percentiles,
    Report,
    Segment,
)
from shadowproxy.stats import TestResult


def summary(report: Report) -> dict[str, Any]:
    data: dict[str, Any] = clean(
        {
            "generated_at": report.generated_at.isoformat(),
            "root": report.root,
            "filters": report.filters,
            "bucket_seconds": report.bucket_seconds,
            "skipped_files": [{"path": p, "reason": r} for p, r in report.skipped_files],
            "pairs": [_pair(p) for p in report.pairs],
            "chaos": [_chaos(c) for c in report.chaos],
            "experiments": [_experiment(e) for e in report.experiments],
            "canaries": [_canary(c) for c in report.canaries],
            "warnings": list(report.warnings),
        }
    )
    if report.drift is not None:
        from shadowproxy.report import drift_output

        data["drift"] = clean(drift_output.as_json(report.drift)) if not report.drift.note else None
    return data


def dumps(report: Report) -> str:
    return json.dumps(summary(report), indent=2, allow_nan=False) + "\n"


def _pair(pair: PairReport) -> dict[str, Any]:
    return {
        "route": pair.route,
        "shadow": pair.shadow,
        "role": pair.role,
        "rows": pair.rows,
        "outcomes": dict(pair.outcomes),
        "compared": pair.compared,
        "agreed": pair.agreed,
        "agreement_rate": pair.agreement_rate,
        "agreement_ci95": _interval(pair.agreement_ci),
        "comparator": pair.comparator or None,
        "http_5xx_rate": {"production": pair.prod_5xx_rate, "shadow": pair.shadow_5xx_rate},
        "status_mismatch": pair.status_mismatch,
        "prod_latency_ms": _percentiles(pair.latency.production),
        "shadow_latency_ms": _percentiles(pair.latency.shadow),
        "latency_test": _latency_test(pair.latency),
        "noise_floor": _noise(pair.noise_floor),
        "labels": _labels(pair.labels),
        "segments": [_segment(s) for s in pair.segments],
        "verdict": pair.verdict,
        "decision": _decision(pair.decision),
        "chaos_excluded": pair.chaos_excluded,
        "nonfinite_latency_rows": pair.nonfinite_latency,
    }


def _decision(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {
        "status": decision.status,
        "sentence": decision.sentence,
        "criteria": [_criterion(c) for c in decision.criteria],
    }


def _criterion(c: Criterion) -> dict[str, Any]:
    return {
        "name": c.name,
        "estimate": c.estimate,
        "interval": _interval(c.interval),
        "p_value": c.p_value,
        "p_value_fail": c.p_fail,
        "margin": c.margin,
        "result": c.result,
        "test": c.test,
        "needed": c.needed,
        "unit": c.unit,
    }


def _canary(history: CanaryHistory) -> dict[str, Any]:
    steps = [*history.steps]
    return {
        "route": history.route,
        "candidate": history.candidate,
        "status": history.status,
        "percent": history.percent,
        "source": history.source,
        "decisions": [_canary_step(s) for s in steps],
        "last_evaluation": _canary_step(history.last_evaluation)
        if history.last_evaluation
        else None,
    }


def _canary_step(step: CanaryStep) -> dict[str, Any]:
    return {
        "at": step.at.isoformat(),
        "action": step.action,
        "by": step.by,
        "from_percent": step.from_percent,
        "percent": step.percent,
        "status": step.status,
        "reasons": list(step.reasons),
        "candidate_requests": step.candidate_requests,
        "production_requests": step.production_requests,
        "guardrails": [
            {
                "metric": g.metric,
                "verdict": g.verdict,
                "value": g.value,
                "lower": g.lower,
                "upper": g.upper,
                "limit": g.limit,
            }
            for g in step.guardrails
        ],
    }


def _chaos(check: ChaosCheck) -> dict[str, Any]:
    return {
        "route": check.route,
        "target": check.target,
        "fault": check.fault,
        "parameter": check.parameter,
        "rows": check.rows,
        "measure": check.measure,
        "measured": check.measured,
        "injected": check.injected,
        "clean": check.clean,
        "clean_rows": check.clean_rows,
        "expected": check.expected,
        "noticed": check.noticed,
    }


def _experiment(e: Experiment) -> dict[str, Any]:
    test = _test(e.test)
    if test is not None:
        test |= {
            "difference": e.difference,
            "ci_low": e.difference_ci.lo if e.difference_ci else None,
            "ci_high": e.difference_ci.hi if e.difference_ci else None,
            "superiority": getattr(e.test, "superiority", None),
        }
    srm_test = e.srm.test
    return {
        "route": e.route,
        "design": e.design,
        "kind": e.kind,
        "unit": e.unit,
        "units_in_several_arms": e.units_in_several_arms,
        "control": e.control,
        "arms": [_arm(a) for a in e.arms],
        "test": test,
        "srm": {
            "observed": dict(e.srm.observed),
            "expected_shares": dict(e.srm.expected_shares),
            "statistic": srm_test.statistic if srm_test else None,
            "p_value": srm_test.p_value if srm_test else None,
            "mismatch": e.srm.mismatch,
            "note": e.srm.note or None,
        },
        "power": {
            "mde_relative": e.power.mde_relative,
            "n_needed_per_arm": e.power.n_needed_per_arm,
            "mde_at_current_n": e.power.mde_at_current_n,
        },
        "ignored_feedback": e.ignored,
        "warnings": list(e.warnings),
    }


def _arm(arm: ExperimentArm) -> dict[str, Any]:
    return {
        "name": arm.name,
        "exposed": arm.exposed,
        "with_outcome": arm.with_outcome,
        "requests": arm.requests,
        "share": arm.share,
        "mean": arm.mean,
        "ci_low": arm.ci.lo if arm.ci else None,
        "ci_high": arm.ci.hi if arm.ci else None,
        "difference": arm.difference,
        "difference_ci95": _interval(arm.difference_ci),
        "p_value": arm.p_value,
    }


def _interval(ci: Interval | None) -> list[float] | None:
    return None if ci is None else [ci.lo, ci.hi]


def _percentiles(p: Percentiles) -> dict[str, float | None]:
    return {"p50": p.p50, "p95": p.p95, "p99": p.p99}


def _test(test: TestResult | None) -> dict[str, Any] | None:
    if test is None:
        return None
    return {"name": test.name, "statistic": test.statistic, "p_value": test.p_value}


def _latency_test(latency: Latency) -> dict[str, Any]:
    """The paired t test over every pair and the mean difference with the t interval it
    inverts (``mean_diff_ms``, ``mean_diff_ci95``): they never disagree about zero."""
    test = _test(latency.test) or {"name": "paired t", "statistic": None, "p_value": None}
    return test | {
        "df": getattr(latency.test, "df", None),
        "pairs": latency.pairs,
        "sample": latency.sample,
        "mean_diff_ms": latency.mean_diff,
        "mean_diff_ci95": _interval(latency.mean_diff_ci),
    }


def _noise(floor: NoiseFloor | None) -> dict[str, Any] | None:
    if floor is None:
        return None
    return {
        "baselines": list(floor.baselines),
        "compared": floor.compared,
        "disagreement_rate": floor.rate,
        "disagreement_ci95": _interval(floor.ci),
        "excess_test": _test(floor.test),
        "mde": floor.mde,
    }


def _labels(labels: Labels | None) -> dict[str, Any] | None:
    if labels is None:
        return None
    return {
        "n": labels.n,
        "task": labels.task,
        "production": dict(labels.production),
        "shadow": dict(labels.shadow),
        "test": _test(labels.test),
        "difference": labels.difference,
        "difference_ci95": _interval(labels.difference_ci),
        "mde": labels.mde,
        "more_labels_needed": labels.more_labels_needed,
        "duplicate_rows_folded": labels.duplicates,
    }


def _segment(segment: Segment) -> dict[str, Any]:
    return {
        "path": segment.path,
        "value": segment.value,
        "rows": segment.rows,
        "compared": segment.compared,
        "agreement_rate": segment.rate,
        "agreement_ci95": _interval(segment.ci),
        "p_value": segment.p_value,
        "p_adjusted": segment.p_adjusted,
        "worse": segment.worse,
    }


def clean(value: Any) -> Any:
    """NaN and infinities become ``null``; everything else passes through."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
