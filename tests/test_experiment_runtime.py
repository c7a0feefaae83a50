"""The canary controller's disagreement feed: the check shadow a route gets, and how
cumulative verdict counts become window comparisons (resets included)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shadowproxy.config import RouteConfig
from shadowproxy.experiments.spec import CHECK_SHADOW
from shadowproxy.metrics import Metrics
from shadowproxy.proxy.arms import (
    CHECK_MAX_IN_FLIGHT,
    CanaryController,
    check_shadow,
    verdict_delta,
)
from shadowproxy.records import VerdictCounts

DISAGREEMENT = {"metric": "disagreement", "max": 0.05, "sample_rate": 0.25}


def canary(*guardrails: dict[str, Any]) -> RouteConfig:
    return RouteConfig.model_validate(
        {
            "name": "price",
            "match": {"path_prefix": "/price"},
            "production": {"url": "http://127.0.0.1:1", "timeout_s": 3},
            "mode": "canary",
            "canary": {
                "candidate": {"name": "v2", "url": "http://127.0.0.1:2"},
                "guardrails": list(guardrails),
            },
        }
    )


@pytest.mark.parametrize(
    ("seen", "now", "delta"),
    [
        ((0, 0), (0, 0), (0, 0)),
        ((0, 0), (7, 2), (7, 2)),
        ((7, 2), (9, 2), (2, 0)),
        ((7, 2), (7, 5), (0, 3)),
        # Counts went down: a sink that counts from zero again. All of it is new.
        ((7, 2), (3, 4), (3, 4)),
        ((7, 2), (8, 1), (8, 1)),
        ((7, 2), (0, 0), (0, 0)),
    ],
)
def test_verdict_delta(seen: tuple[int, int], now: tuple[int, int], delta: tuple[int, int]) -> None:
    assert verdict_delta(seen, now) == delta


def test_the_check_shadow_calls_production_at_the_guardrails_sample_rate() -> None:
    shadow = check_shadow(canary({"metric": "error_rate", "max_increase": 0.01}, DISAGREEMENT))
    assert shadow is not None
    assert (shadow.name, shadow.url, shadow.role) == (
        CHECK_SHADOW,
        "http://127.0.0.1:1",
        "candidate",
    )
    assert (shadow.sample_rate, shadow.timeout_s) == (0.25, 3)
    assert shadow.max_in_flight == CHECK_MAX_IN_FLIGHT and shadow.sample_key is None
    assert check_shadow(canary({"metric": "error_rate", "max_increase": 0.01})) is None
    assert check_shadow(canary()) is None


def controller(tmp_path: Path, route: RouteConfig) -> CanaryController:
    assert route.canary is not None
    metrics = Metrics(CollectorRegistry())
    return CanaryController(route.name, route.canary, str(tmp_path), metrics, now=0.0)


async def test_each_tick_adds_the_verdicts_since_the_last_one(tmp_path: Path) -> None:
    counts: dict[tuple[str, str], tuple[int, int]] = {("price", CHECK_SHADOW): (5, 5)}
    control = controller(tmp_path, canary(DISAGREEMENT))

    def source() -> VerdictCounts:
        return counts

    control.start(source)
    try:
        control.tick(1.0)
        # What was counted before the controller started is not this canary's evidence.
        assert (control.window.compared, control.window.disagreed) == (0, 0)
        counts[("price", CHECK_SHADOW)] = (45, 8)
        counts[("price", "other-shadow")] = (0, 100)
        counts[("other-route", CHECK_SHADOW)] = (0, 100)
        control.tick(2.0)
        assert (control.window.compared, control.window.disagreed) == (43, 3)
        counts[("price", CHECK_SHADOW)] = (2, 1)  # the sink started again from zero
        control.tick(3.0)
        assert (control.window.compared, control.window.disagreed) == (46, 4)
        evidence = control.canary.last_evaluation
        assert evidence is not None
        (guardrail,) = evidence.evidence["guardrails"]
        assert (guardrail["metric"], guardrail["compared"]) == ("disagreement", 46)
    finally:
        await control.stop()


async def test_without_a_verdict_source_the_guardrail_is_said_to_stay_undecided(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    control = controller(tmp_path, canary(DISAGREEMENT))
    with caplog.at_level(logging.WARNING, logger="shadowproxy.proxy.arms"):
        control.start(None)
    await control.stop()
    assert "disagreement guardrail stays undecided" in caplog.text
    caplog.clear()
    quiet = controller(tmp_path / "other", canary({"metric": "error_rate", "max_increase": 0.01}))
    with caplog.at_level(logging.WARNING, logger="shadowproxy.proxy.arms"):
        quiet.start(None)
    await quiet.stop()
    assert caplog.text == ""


async def test_a_normal_advance_is_logged_at_info_and_a_rollback_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    route = RouteConfig.model_validate(
        {
            "name": "price",
            "match": {"path_prefix": "/price"},
            "production": {"url": "http://127.0.0.1:1"},
            "mode": "canary",
            "canary": {
                "candidate": {"name": "v2", "url": "http://127.0.0.1:2"},
                "steps": [10, 50, 100],
                "step_min_requests": 40,
                "step_min_duration_s": 0,
                "guardrail_min_samples": 20,
                "guardrails": [{"metric": "error_rate", "max_increase": 0.5}],
            },
        }
    )
    control = controller(tmp_path, route)
    for _ in range(200):
        control.window.record("candidate", error=False, latency_ms=10.0)
        control.window.record("production", error=False, latency_ms=10.0)
    with caplog.at_level(logging.INFO, logger="shadowproxy.proxy.arms"):
        decision = control.tick(10.0)
    assert decision.action == "advance"
    (record,) = [r for r in caplog.records if "canary price" in r.getMessage()]
    assert record.levelno == logging.INFO
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shadowproxy.proxy.arms"):
        control.act("rollback", by="test")
    (record,) = [r for r in caplog.records if "canary price" in r.getMessage()]
    assert record.levelno == logging.WARNING
