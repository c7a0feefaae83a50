"""Chaos rules: config validation with field paths, and the draw (pure, seeded)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowproxy.config import load_config
from shadowproxy.errors import ConfigError
from shadowproxy.experiments.chaos import (
    PRODUCTION_FRACTION_CAP,
    ChaosRule,
    Injection,
    corrupts,
    draw,
    rules_for,
)

ROUTE: dict[str, Any] = {
    "name": "price",
    "match": {"path_prefix": "/v1/models/price"},
    "production": {"url": "http://127.0.0.1:8001"},
    "shadows": [
        {"name": "candidate-v2", "url": "http://127.0.0.1:8002"},
        {"name": "baseline", "url": "http://127.0.0.1:8003", "role": "baseline"},
    ],
}

SPEC = [
    {"target": "shadow:candidate-v2", "fraction": 0.1, "delay_ms": 500},
    {"target": "shadow:candidate-v2", "fraction": 0.05, "abort_status": 503},
    {"target": "shadow:candidate-v2", "fraction": 0.05, "corrupt_prediction": True},
]


def route_file(tmp_path: Path, chaos: list[dict[str, Any]]) -> Path:
    (tmp_path / "routes").mkdir(exist_ok=True)
    (tmp_path / "routes" / "price.yaml").write_text(yaml.safe_dump({**ROUTE, "chaos": chaos}))
    main = tmp_path / "shadowproxy.yaml"
    main.write_text(yaml.safe_dump({"routes_dir": "routes"}))
    return main


def rule(**fields: Any) -> ChaosRule:
    return ChaosRule.model_validate(fields)


def test_the_issue_example_loads(tmp_path: Path) -> None:
    route = load_config(route_file(tmp_path, SPEC), environ={}).routes[0]
    assert [r.fault for r in route.chaos] == ["delay", "abort", "corrupt"]
    assert {r.shadow for r in route.chaos} == {"candidate-v2"}
    assert rules_for(route.chaos, "shadow:baseline") == ()


def test_production_faults_load_with_consent_under_the_cap(tmp_path: Path) -> None:
    chaos = [
        {"target": "production", "fraction": PRODUCTION_FRACTION_CAP, "delay_ms": 50,
         "allow_production": True},
        {"target": "production", "fraction": 0.01, "abort_status": 503, "allow_production": True},
    ]  # fmt: skip
    route = load_config(route_file(tmp_path, chaos), environ={}).routes[0]
    assert [(r.shadow, r.fault) for r in rules_for(route.chaos, "production")] == [
        (None, "delay"),
        (None, "abort"),
    ]


BAD = [
    (
        [SPEC[0], {"target": "shadow:candidat-v2", "fraction": 0.1, "delay_ms": 5}],
        "chaos[1].target",
        "no shadow named 'candidat-v2' in this route (shadows: candidate-v2, baseline)",
    ),
    (
        [{"target": "candidate-v2", "fraction": 0.1, "delay_ms": 5}],
        "chaos[0].target",
        "must be 'shadow:<name>' or 'production', got 'candidate-v2'",
    ),
    (
        [{"target": "shadow:candidate-v2", "fraction": 0.1, "delay_ms": 5, "abort_status": 503}],
        "chaos[0]",
        ("give exactly one fault: delay_ms, abort_status or corrupt_prediction: true "
         "(got delay_ms and abort_status)"),
    ),
    (
        [{"target": "shadow:candidate-v2", "fraction": 0.1, "corrupt_prediction": False}],
        "chaos[0]",
        "give exactly one fault: delay_ms, abort_status or corrupt_prediction: true (got none)",
    ),
    (
        [{"target": "production", "fraction": 0.01, "delay_ms": 5}],
        "chaos[0].allow_production",
        "faults on production reach real users: set allow_production: true to mean it",
    ),
    (
        [{"target": "production", "fraction": 0.2, "abort_status": 503, "allow_production": True}],
        "chaos[0].fraction",
        "must be at most 0.05 on production, got 0.2",
    ),
    (
        [{"target": "production", "fraction": 0.01, "corrupt_prediction": True,
          "allow_production": True}],
        "chaos[0].corrupt_prediction",
        "not allowed on production: the client would get the corrupted answer",
    ),
    (
        [{"target": "production", "fraction": 0.01, "abort_status": 200, "allow_production": True}],
        "chaos[0].abort_status",
        "must be 400..599 on production (the client gets an error answer), got 200",
    ),
    (
        [{"target": "shadow:baseline", "fraction": 0, "abort_status": 503}],
        "chaos[0].fraction",
        "must be greater than 0, got 0",
    ),
    (
        [{"target": "shadow:baseline", "fraction": 0.5, "abort_status": 99}],
        "chaos[0].abort_status",
        "must be at least 100, got 99",
    ),
    (
        [{"target": "shadow:baseline", "fraction": 0.5, "delay_ms": -1}],
        "chaos[0].delay_ms",
        "must be greater than 0, got -1",
    ),
    (
        [{"target": "shadow:baseline", "fraction": 0.5, "delay": 100}],
        "chaos[0].delay",
        ("unknown key (did you mean 'delay_ms'?); allowed: abort_status, allow_production, "
         "corrupt_prediction, delay_ms, fraction, target"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("chaos", "field", "message"), BAD)
def test_errors_name_the_file_and_field(
    tmp_path: Path, chaos: list[dict[str, Any]], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(route_file(tmp_path, chaos), environ={})
    error = caught.value
    assert (error.file, error.field, error.message) == (
        str(tmp_path / "routes" / "price.yaml"),
        field,
        message,
    )


def test_inline_routes_get_the_full_path(tmp_path: Path) -> None:
    chaos = [{"target": "shadow:nope", "fraction": 0.1, "delay_ms": 5}]
    main = tmp_path / "shadowproxy.yaml"
    main.write_text(yaml.safe_dump({"routes": [{**ROUTE, "shadows": [], "chaos": chaos}]}))
    with pytest.raises(ConfigError) as caught:
        load_config(main, environ={})
    assert str(caught.value) == (
        f"{main}: routes[0].chaos[0].target: no shadow named 'nope' in this route (shadows: none)"
    )


# --- the draw ------------------------------------------------------------------------


class Script:
    """A random source that returns the given numbers, and counts the calls."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0)


DELAY = rule(target="shadow:s", fraction=0.5, delay_ms=200)
DELAY_2 = rule(target="shadow:s", fraction=0.5, delay_ms=50)
ABORT = rule(target="shadow:s", fraction=0.5, abort_status=503)
ABORT_2 = rule(target="shadow:s", fraction=0.5, abort_status=500)
CORRUPT = rule(target="shadow:s", fraction=0.5, corrupt_prediction=True)


@pytest.mark.parametrize(
    ("rules", "draws", "expected", "marker"),
    [
        ((DELAY, ABORT, CORRUPT), (0.9, 0.9, 0.9), None, None),
        ((DELAY, ABORT, CORRUPT), (0.1, 0.9, 0.9), Injection(delay_s=0.2), "delay_ms=200"),
        ((DELAY, ABORT, CORRUPT), (0.9, 0.4999, 0.9), Injection(abort_status=503),
         "abort_status=503"),
        # An abort replaces the call: the delay and the corruption drawn with it do not apply.
        ((DELAY, ABORT, CORRUPT), (0.1, 0.1, 0.1), Injection(abort_status=503),
         "abort_status=503"),
        ((DELAY, ABORT, CORRUPT), (0.1, 0.9, 0.1), Injection(delay_s=0.2, corrupt=True),
         "delay_ms=200,corrupt_prediction"),
        ((DELAY, ABORT, CORRUPT), (0.9, 0.9, 0.0), Injection(corrupt=True), "corrupt_prediction"),
        ((DELAY, DELAY_2), (0.1, 0.1), Injection(delay_s=0.25), "delay_ms=250"),
        ((ABORT_2, ABORT), (0.1, 0.1), Injection(abort_status=500), "abort_status=500"),
        ((DELAY,), (0.5,), None, None),  # fraction 0.5 means random() < 0.5
    ],
)  # fmt: skip
def test_draw_applies_faults_in_a_fixed_order(
    rules: tuple[ChaosRule, ...],
    draws: tuple[float, ...],
    expected: Injection | None,
    marker: str | None,
) -> None:
    script = Script(*draws)
    injection = draw(rules, script)
    assert injection == expected
    assert script.calls == len(rules)  # every rule draws once, whatever fired before
    if injection is not None:
        assert injection.marker == marker
        assert corrupts(injection.marker) is injection.corrupt


def test_faults_are_named_as_in_the_metric() -> None:
    assert Injection(abort_status=503).faults == ("abort",)
    assert Injection(delay_s=0.1, corrupt=True).faults == ("delay", "corrupt")
    assert Injection().faults == ()
    assert Injection().marker == ""


def test_independent_draws_hit_each_fraction() -> None:
    rules = (rule(target="shadow:s", fraction=0.1, delay_ms=1),
             rule(target="shadow:s", fraction=0.3, corrupt_prediction=True))  # fmt: skip
    rng = random.Random(7)
    drawn = [draw(rules, rng.random) for _ in range(20_000)]
    delayed = sum(1 for d in drawn if d is not None and d.delay_s)
    corrupted = sum(1 for d in drawn if d is not None and d.corrupt)
    both = sum(1 for d in drawn if d is not None and d.delay_s and d.corrupt)
    assert delayed == pytest.approx(2_000, rel=0.08)
    assert corrupted == pytest.approx(6_000, rel=0.05)
    assert both == pytest.approx(600, rel=0.15)  # independent: 0.1 x 0.3
    # Seeded: the same sequence every time.
    rng = random.Random(7)
    assert [draw(rules, rng.random) for _ in range(20_000)] == drawn


def test_a_fraction_of_one_always_fires() -> None:
    always = (rule(target="shadow:s", fraction=1.0, abort_status=599),)
    assert draw(always, lambda: 0.9999999999) == Injection(abort_status=599)


@pytest.mark.parametrize(
    ("marker", "expected"),
    [(None, False), ("", False), ("delay_ms=5", False), ("corrupt_prediction", True),
     ("delay_ms=5,corrupt_prediction", True), ("abort_status=503", False)],
)  # fmt: skip
def test_corrupts_reads_the_marker(marker: str | None, expected: bool) -> None:
    assert corrupts(marker) is expected
