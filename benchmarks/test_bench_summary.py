"""Medians, paired comparisons, targets and the rendered tables.

Run with ``.venv/bin/pytest benchmarks`` (not part of ``make test``).
"""

from __future__ import annotations

from typing import Any

import pytest
import summary
from bench_proxy import expected_seconds, make_plan


def run(system: str, scenario: str, load: str, round_no: int = 1, **values: Any) -> dict[str, Any]:
    base = {"rps": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "ok": 1000, "errors": 0}
    return {"round": round_no, "system": system, "scenario": scenario, "load": load} | base | values


def test_stat_and_fmt() -> None:
    value = summary.stat([3.0, 1.0, 2.0])
    assert value == summary.Stat(2.0, 1.0, 3.0, 3)
    assert summary.fmt(value, ".1f", " ms") == "2.0 ms (1.0-3.0)"
    assert summary.fmt(summary.stat([5.0]), ",.0f") == "5"
    assert summary.fmt(None) == "-"


def test_comparisons_are_paired_within_rounds() -> None:
    # Round 2 is slow for both systems; pairing keeps the ratio at 0.5 in both rounds.
    runs = [
        run("shadowproxy", "healthy", "c64", 1, rps=500.0),
        run("nginx-mirror", "healthy", "c64", 1, rps=1000.0),
        run("shadowproxy", "healthy", "c64", 2, rps=100.0),
        run("nginx-mirror", "healthy", "c64", 2, rps=200.0),
        run("nginx-mirror", "healthy", "c64", 3, rps=900.0),  # no partner: ignored
    ]
    ratio = summary.vs_healthy(runs, "shadowproxy", "nginx-mirror", "c64", "rps", summary.ratio)
    assert ratio == summary.Stat(0.5, 0.5, 0.5, 2)


def test_targets_pass_fail_and_not_measured() -> None:
    runs = [
        run("direct", "healthy", "r500", p50_ms=0.2, p99_ms=1.0),
        run("shadowproxy", "healthy", "r500", p50_ms=0.5, p99_ms=1.5, rss_mb=80.0),
        run("shadowproxy", "slow", "r500", p99_ms=1.6),
    ]
    found = {t.name: t for t in summary.targets(runs)}
    assert found["added p50 vs direct @500/s"].passed is True  # +0.3 ms
    assert found["added p99 vs direct @500/s"].passed is True  # +0.5 ms
    assert found["slow (+200 ms) shadow: p99 @500/s change"].measured == "+7%"
    assert found["slow (+200 ms) shadow: p99 @500/s change"].passed is True
    assert found["peak RSS, any scenario"].passed is False
    assert found["req/s vs nginx-mirror, 64 conns"].passed is None


def test_overloaded_fixed_rate_runs_are_called_out() -> None:
    runs = [run("shadowproxy", "healthy", "r1500", rate=1500.0, rps=900.0)]
    assert "overloaded" in summary.overload_notes(runs)[0]


def test_render_without_nginx() -> None:
    runs = [
        run(system, "healthy", load)
        for system in ("direct", "shadowproxy")
        for load in ("c16", "r500")
    ]
    text = summary.render(runs, ["direct", "shadowproxy"], ["a note"])
    assert "### Targets" in text and "- a note" in text and "| n/a |" in text


@pytest.mark.parametrize("quick", [True, False])
def test_plan_alternates_systems_and_estimates_time(quick: bool) -> None:
    plan = make_plan(quick, ["direct", "shadowproxy", "nginx-mirror"])
    assert [step.scenario for step in plan] == ["healthy", "slow", "down", "blackhole"]
    assert plan[1].systems == ("shadowproxy", "nginx-mirror")
    seconds = expected_seconds(plan, rounds=1, duration_s=3.0)
    assert 60 < seconds < 150
