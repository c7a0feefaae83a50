"""The ``canary:`` and ``ab:`` blocks: the issue's examples load, defaults, and every
mistake is refused with the field it is in, through the loader's own error formatting."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from shadowproxy.config.files import _validate
from shadowproxy.errors import ConfigError
from shadowproxy.experiments.spec import (
    ABSpec,
    CanarySpec,
    GuardrailSpec,
    check_layers,
    key_header,
)

CANARY_YAML = """
candidate: {name: v2, url: "http://127.0.0.1:8002", timeout_s: 10}
assignment_key: header:X-User-Id
steps: [1, 5, 25, 50, 100]
step_min_requests: 500
step_min_duration_s: 300
guardrails:
  - {metric: error_rate, max_increase: 0.01}
  - {metric: p99_latency_ms, max_increase_ratio: 1.2}
  - {metric: disagreement, max: 0.05}
on_fail: rollback
"""

AB_YAML = """
arms: [{name: control, url: "http://127.0.0.1:8001", weight: 50},
       {name: treatment, url: "http://127.0.0.1:8002", weight: 50}]
assignment_key: header:X-User-Id
layer: ranking
"""

CANARY: dict[str, Any] = yaml.safe_load(CANARY_YAML)
AB: dict[str, Any] = yaml.safe_load(AB_YAML)


def canary_error(**change: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _validate(CanarySpec, {**CANARY, **change}, "routes/price.yaml")
    return caught.value


def ab_error(**change: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _validate(ABSpec, {**AB, **change}, "routes/rank.yaml")
    return caught.value


def test_the_issue_canary_example_loads() -> None:
    spec = CanarySpec.model_validate(CANARY)
    assert spec.candidate.name == "v2" and spec.candidate.url == "http://127.0.0.1:8002"
    assert spec.steps == (1.0, 5.0, 25.0, 50.0, 100.0)
    assert spec.key_header == "X-User-Id"
    assert [(g.metric, g.limit) for g in spec.guardrails] == [
        ("error_rate", 0.01),
        ("p99_latency_ms", 1.2),
        ("disagreement", 0.05),
    ]
    assert (spec.on_fail, spec.confidence, spec.guardrail_min_samples) == ("rollback", 0.95, 30)


def test_canary_defaults() -> None:
    spec = CanarySpec.model_validate({"candidate": {"name": "v2", "url": "http://h:1/"}})
    assert spec.candidate.url == "http://h:1" and spec.candidate.timeout_s == 10.0
    assert spec.assignment_key == "random" and spec.key_header is None
    assert spec.steps == (1.0, 5.0, 25.0, 50.0, 100.0)
    assert (spec.step_min_requests, spec.step_min_duration_s) == (500, 300.0)
    assert spec.guardrails == () and spec.on_fail == "rollback"


def test_the_issue_ab_example_loads() -> None:
    spec = ABSpec.model_validate(AB)
    assert spec.weights == (("control", 50.0), ("treatment", 50.0))
    assert spec.layer_of("rank") == "ranking" and spec.layer_share == (0.0, 1.0)
    assert spec.arm_header == "X-Experiment-Arm" and spec.key_header == "X-User-Id"
    alone = ABSpec.model_validate({**AB, "layer": None})
    assert alone.layer_of("rank") == "experiment:rank"


def test_specs_are_frozen() -> None:
    spec = CanarySpec.model_validate(CANARY)
    with pytest.raises(ValidationError):
        spec.confidence = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "stored", "header"),
    [
        ("header:X-User-Id", "header:X-User-Id", "X-User-Id"),
        (" header: X-User-Id ", "header:X-User-Id", "X-User-Id"),
        ("random", "random", None),
        (None, "random", None),
    ],
)
def test_assignment_key_forms(given: str | None, stored: str, header: str | None) -> None:
    spec = CanarySpec.model_validate({**CANARY, "assignment_key": given})
    assert spec.assignment_key == stored and key_header(stored) == header == spec.key_header


@pytest.mark.parametrize("given", ["cookie:uid", "header:", "header:X User", "X-User-Id", "Random"])
def test_assignment_key_mistakes(given: str) -> None:
    error = canary_error(assignment_key=given)
    assert error.field == "assignment_key"
    assert "must be 'header:<Name>'" in error.message and "or 'random'" in error.message
    assert repr(given) in error.message


def guardrail(**fields: Any) -> dict[str, Any]:
    return {**CANARY, "guardrails": [{"metric": "error_rate", "max_increase": 0.01}, fields]}


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            {"metric": "error_rate", "max_increase": 1.5},
            "guardrails[1].max_increase",
            "must be at most 1, got 1.5",
        ),
        (
            {"metric": "error_rate", "max_increase": -0.1},
            "guardrails[1].max_increase",
            "must be at least 0, got -0.1",
        ),
        (
            {"metric": "p99_latency_ms", "max_increase_ratio": 0.9},
            "guardrails[1].max_increase_ratio",
            "must be at least 1, got 0.9",
        ),
        ({"metric": "disagreement", "max": 2}, "guardrails[1].max", "must be at most 1, got 2"),
        (
            {"metric": "disagreement", "max": 0.1, "sample_rate": 0},
            "guardrails[1].sample_rate",
            "must be greater than 0, got 0",
        ),
        (
            {"metric": "error_rate", "max": 0.05},
            "guardrails[1]",
            "error_rate takes max_increase (the largest tolerated increase of the candidate's error rate over production's, 0..1), not max",
        ),
        (
            {"metric": "disagreement", "max_increase": 0.05},
            "guardrails[1]",
            "disagreement takes max (the largest tolerated share",
        ),
        (
            {"metric": "p99_latency_ms"},
            "guardrails[1]",
            "p99_latency_ms needs max_increase_ratio: the largest tolerated ratio",
        ),
        (
            {"metric": "error_rate", "max_increase": 0.01, "sample_rate": 0.5},
            "guardrails[1]",
            "sample_rate only applies to metric: disagreement",
        ),
        (
            {"metric": "eror_rate", "max_increase": 0.01},
            "guardrails[1].metric",
            "unknown metric 'eror_rate' (did you mean 'error_rate'?); one of: error_rate, p99_latency_ms, disagreement",
        ),
        (
            {"metric": "error_rate", "max_incrase": 0.01},
            "guardrails[1].max_incrase",
            "unknown key (did you mean 'max_increase'?); allowed: max, max_increase, max_increase_ratio, metric, sample_rate",
        ),
        ({"max_increase": 0.01}, "guardrails[1].metric", "required"),
    ],
)
def test_guardrail_mistakes_name_the_field(
    fields: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _validate(CanarySpec, guardrail(**fields), "routes/price.yaml")
    assert caught.value.file == "routes/price.yaml"
    assert caught.value.field == field
    assert caught.value.message.startswith(message), caught.value.message


def test_one_guardrail_per_metric() -> None:
    error = canary_error(guardrails=[{"metric": "disagreement", "max": 0.1}] * 2)
    assert (error.field, error.message) == (
        "guardrails",
        "metric 'disagreement' has two guardrails; keep one",
    )


def test_a_disagreement_guardrail_may_sample() -> None:
    spec = GuardrailSpec(metric="disagreement", max=0.05, sample_rate=0.2)
    assert (spec.limit, spec.sample_rate) == (0.05, 0.2)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"steps": [5, 1]}, "steps", "must be strictly increasing, got 1 after 5"),
        ({"steps": [1, 1]}, "steps", "must be strictly increasing, got 1 after 1"),
        ({"steps": [0, 5]}, "steps", "every step must be in (0, 100], got 0 at [0]"),
        ({"steps": [50, 150]}, "steps", "every step must be in (0, 100], got 150 at [1]"),
        ({"steps": []}, "steps", "must list at least one percentage"),
        ({"on_fail": "ignore"}, "on_fail", "input should be 'rollback' or 'pause', got 'ignore'"),
        ({"confidence": 1.0}, "confidence", "must be less than 1, got 1.0"),
        ({"confidence": 0.5}, "confidence", "must be greater than 0.5, got 0.5"),
        ({"step_min_requests": 0}, "step_min_requests", "must be at least 1, got 0"),
        ({"step_min_duration_s": -1}, "step_min_duration_s", "must be at least 0, got -1"),
        (
            {"candidate": {"name": "v 2", "url": "http://h:1"}},
            "candidate.name",
            "must be 1-63 letters",
        ),
        (
            {"candidate": {"name": "v2", "url": "http://h:1/v1"}},
            "candidate.url",
            "must be scheme://host[:port] only",
        ),
        (
            {"candidate": {"name": "v2", "url": "ftp://h"}},
            "candidate.url",
            "must be an http:// or https:// URL",
        ),
        ({"candidate": {"name": "v2"}}, "candidate.url", "required"),
        ({"stepz": [1]}, "stepz", "unknown key (did you mean 'steps'?)"),
    ],
)
def test_canary_mistakes_name_the_field(change: dict[str, Any], field: str, message: str) -> None:
    error = canary_error(**change)
    assert error.field == field
    assert error.message.startswith(message), error.message


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"arms": AB["arms"][:1]}, "arms", "tuple should have at least 2 items"),
        ({"arms": [AB["arms"][0], AB["arms"][0]]}, "arms", "arm name 'control' is used twice"),
        (
            {"arms": [AB["arms"][0], {**AB["arms"][1], "weight": 0}]},
            "arms[1].weight",
            "must be greater than 0, got 0",
        ),
        (
            {"layer_share": [0.5, 0.5]},
            "layer_share",
            "must be [start, end) with 0 <= start < end <= 1, got [0.5, 0.5]",
        ),
        ({"layer_share": [0.2, 1.5]}, "layer_share[1]", "must be at most 1, got 1.5"),
        ({"layer": None, "layer_share": [0, 0.5]}, None, "layer_share needs a layer"),
        ({"layer": "rank ing"}, "layer", "must be 1-63 letters"),
        ({"arm_header": "X Arm"}, "arm_header", "'X Arm' is not a valid header name"),
        ({"assignment_key": "user"}, "assignment_key", "must be 'header:<Name>'"),
    ],
)
def test_ab_mistakes_name_the_field(
    change: dict[str, Any], field: str | None, message: str
) -> None:
    error = ab_error(**change)
    assert error.field == field
    assert error.message.startswith(message), error.message


def ab(layer: str | None, share: tuple[float, float] = (0.0, 1.0)) -> ABSpec:
    extra = {} if layer is None else {"layer": layer, "layer_share": share}
    return ABSpec.model_validate({"arms": AB["arms"], **extra})


def test_layers_may_not_overlap() -> None:
    check_layers([("a", ab("ranking", (0, 0.5))), ("b", ab("ranking", (0.5, 1)))])
    check_layers([("a", ab("ranking")), ("b", ab("search")), ("c", ab(None)), ("d", ab(None))])
    with pytest.raises(
        ValueError,
        match=r"layer 'ranking': 'b' has layer_share \[0.4, 1\), which overlaps 'a' at \[0, 0.5\)",
    ):
        check_layers([("a", ab("ranking", (0, 0.5))), ("b", ab("ranking", (0.4, 1)))])
    with pytest.raises(ValueError, match="'c' has layer_share"):
        check_layers([("a", ab("x", (0, 0.3))), ("b", ab("x", (0.3, 0.6))), ("c", ab("x"))])
