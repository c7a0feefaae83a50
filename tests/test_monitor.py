"""The ``monitor:`` block and its pure parts: config errors through ``load_config``,
invariants counted once per request for each rule type, features and predictions read
from bodies, and the category bound that keeps labels finite."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowproxy.config import load_config
from shadowproxy.errors import ConfigError
from shadowproxy.monitor import invariants, observe
from shadowproxy.monitor.categories import OTHER, CategoryBound
from shadowproxy.monitor.spec import InvariantSpec, MonitorConfig

ISSUE_EXAMPLE = """
sample_rate: 0.1
prediction: {kind: auto}
features:
  - {name: sqft, path: "$.instances[*][1]", kind: numeric}
  - {name: country, path: "$.country", kind: categorical, max_categories: 20}
invariants:
  - {name: price_non_negative, target: prediction, min: 0}
  - {name: probs_sum_to_one, target: prediction, sum: 1.0, tolerance: 1.0e-6}
  - {name: four_features, target: request, path: "$.instances[*]", length: 4}
  - {name: known_country, target: request, path: "$.country", in: [US, DE, FR, JP]}
reference: {from: "2026-12-01", to: "2026-12-07"}
"""


def load_monitor(tmp_path: Path, monitor: Any) -> MonitorConfig | None:
    route = {
        "name": "price",
        "match": {"path_prefix": "/p"},
        "production": {"url": "http://127.0.0.1:8001"},
        "monitor": monitor,
    }
    main = tmp_path / "shadowproxy.yaml"
    main.write_text(yaml.safe_dump({"routes": [route]}))
    return load_config(main, environ={}).routes[0].monitor


def test_the_issue_example_loads_with_documented_defaults(tmp_path: Path) -> None:
    monitor = load_monitor(tmp_path, yaml.safe_load(ISSUE_EXAMPLE))
    assert monitor is not None
    assert [f.name for f in monitor.features] == ["sqft", "country"]
    assert monitor.invariants[3].allowed == ("US", "DE", "FR", "JP")
    assert monitor.reference is not None and str(monitor.reference.until) == "2026-12-07"
    assert (monitor.alpha, monitor.psi_threshold, monitor.jump_window) == (0.001, 0.2, 500)
    assert monitor.version.path == "$.model_version"


@pytest.mark.parametrize(
    ("monitor", "field", "message"),
    [
        ({"sample_rate": 2}, "routes[0].monitor.sample_rate", "at most 1"),
        (
            {"features": [{"name": "x", "path": "country", "kind": "numeric"}]},
            "routes[0].monitor.features[0].path",
            "must start with '$'",
        ),
        (
            {"invariants": [{"name": "a", "target": "prediction", "min": 0, "sum": 1}]},
            "routes[0].monitor.invariants[0]",
            "exactly one rule",
        ),
        (
            {"invariants": [{"name": "a", "target": "request", "length": 4}]},
            "routes[0].monitor.invariants[0]",
            "needs a path",
        ),
        (
            {"invariants": [{"name": "a", "target": "prediction", "path": "$.x", "min": 0}]},
            "routes[0].monitor.invariants[0]",
            "takes no path",
        ),
        (
            {"invariants": [{"name": "a", "target": "prediction", "min": 2, "max": 1}]},
            "routes[0].monitor.invariants[0]",
            "above max",
        ),
        (
            {"invariants": [{"name": "a", "target": "request", "path": "$.c", "in": []}]},
            "routes[0].monitor.invariants[0]",
            "in lists no values",
        ),
        ({"reference": {"from": "2026-12-07", "to": "2026-12-01"}}, "", "must be before"),
        ({"reference": {"last_days": 7, "root": "s3://x"}}, "", "exactly one of"),
        (
            {
                "features": [
                    {
                        "name": "c",
                        "path": "$.c",
                        "kind": "categorical",
                        "max_categories": 1,
                        "categories": ["a", "b"],
                    }
                ]
            },
            "routes[0].monitor.features[0]",
            "more than max_categories",
        ),
        ({"feature": []}, "routes[0].monitor.feature", "did you mean 'features'"),
        ({"version": {"header": "X Y"}}, "routes[0].monitor.version", "not a valid header"),
        (
            {"version": {"header": "X-V", "path": "$.v"}},
            "routes[0].monitor.version",
            "not both",
        ),
    ],
)
def test_config_errors_name_the_field(
    tmp_path: Path, monitor: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_monitor(tmp_path, monitor)
    assert message in str(caught.value)
    assert field in str(caught.value)


def rule(**fields: Any) -> invariants.Invariant:
    return invariants.Invariant.build(InvariantSpec.model_validate({"name": "r", **fields}))


@pytest.mark.parametrize(
    ("fields", "prediction", "broken"),
    [
        ({"min": 0}, [1.0, 2.0, 0.0], False),
        ({"min": 0}, [1.0, -0.5, -3.0], True),  # two rows break it: counted once
        ({"min": 0, "max": 10}, [[1.0], [11.0]], True),
        ({"max": 10}, 3.5, False),
        ({"min": 0}, ["a"], True),  # a string under min: broken
        ({"sum": 1.0}, [[0.2, 0.8], [0.5, 0.5]], False),
        ({"sum": 1.0}, [[0.2, 0.8], [0.5, 0.4]], True),
        ({"sum": 1.0, "tolerance": 0.2}, [[0.5, 0.4]], False),
        ({"sum": 1.0}, [0.3, 0.7], False),  # a flat list is one distribution
        ({"sum": 1.0}, [{"cat": 0.7, "dog": 0.3}], False),
        ({"length": 2}, [[1, 2], [3, 4]], False),
        ({"length": 2}, [[1, 2], [3]], True),
        ({"in": ["cat", "dog"]}, ["cat", "dog", "cat"], False),
        ({"in": ["cat", "dog"]}, ["cat", "cow"], True),
        ({"in": [1, 0]}, [True], True),  # JSON true is not the number 1
    ],
)
def test_prediction_rules(fields: dict[str, Any], prediction: Any, broken: bool) -> None:
    found = invariants.prediction_violations([rule(target="prediction", **fields)], prediction)
    assert found == (["r"] if broken else [])


@pytest.mark.parametrize(
    ("fields", "body", "broken"),
    [
        ({"path": "$.instances[*]", "length": 4}, {"instances": [[1, 2, 3, 4]] * 3}, False),
        ({"path": "$.instances[*]", "length": 4}, {"instances": [[1, 2, 3, 4], [1]]}, True),
        ({"path": "$.country", "in": ["US", "DE"]}, {"country": "DE"}, False),
        ({"path": "$.country", "in": ["US", "DE"]}, {"country": "XX"}, True),
        ({"path": "$.country", "in": ["US"]}, {}, False),  # nothing matched, nothing checked
        ({"path": "$.instances[*][1]", "min": 0}, {"instances": [[0, 5], [0, -1]]}, True),
        ({"path": "$.instances[*][1]", "min": 0}, {"instances": [[0, "5"]]}, True),
        ({"path": "$.weights", "sum": 1}, {"weights": [0.25, 0.75]}, False),
    ],
)
def test_request_rules(fields: dict[str, Any], body: Any, broken: bool) -> None:
    found = invariants.request_violations([rule(target="request", **fields)], body)
    assert found == (["r"] if broken else [])


def test_each_target_checks_only_its_own_rules() -> None:
    monitor = MonitorConfig.model_validate(yaml.safe_load(ISSUE_EXAMPLE))
    rules = invariants.build(monitor.invariants)
    request = {"instances": [[1, 2, 3]], "country": "XX"}
    assert invariants.request_violations(rules, request) == ["four_features", "known_country"]
    assert invariants.prediction_violations(rules, [[-0.2, 1.2]]) == ["price_non_negative"]


@pytest.mark.parametrize(
    ("prediction", "kind", "values"),
    [
        ([1.5, 2.5], "numeric", [1.5, 2.5]),
        ([[1.5], [2.5]], "numeric", [1.5, 2.5]),
        ([2, 0, 2], "label", ["2", "0", "2"]),
        ([[2], [0]], "label", ["2", "0"]),
        ([[0.1, 0.9], [0.8, 0.2]], "label", ["1", "0"]),
        ([0.3, 0.7], "label", ["1"]),
        (["cat", "dog"], "label", ["cat", "dog"]),
        ([{"cat": 0.3, "dog": 0.7}], "label", ["dog"]),
        (3.25, "numeric", [3.25]),
    ],
)
def test_prediction_values(prediction: Any, kind: str, values: list[Any]) -> None:
    assert observe.resolve_kind("auto", prediction) == kind
    got = observe.numbers(prediction) if kind == "numeric" else observe.labels(prediction)
    assert got == values


def test_features_read_every_match() -> None:
    monitor = MonitorConfig.model_validate(yaml.safe_load(ISSUE_EXAMPLE))
    sqft, country = (observe.Feature.build(f) for f in monitor.features)
    request = {"instances": [[1, 120.5, 3, 4], [1, 80, 3, 4], [1, "x", 0, 0]], "country": "DE"}
    assert sqft.numbers(request) == [120.5, 80.0]
    assert country.categories(request) == ["DE"]
    assert country.categories({"country": True}) == ["true"]


def test_the_category_bound_keeps_the_first_values_then_other() -> None:
    bound = CategoryBound(2)
    assert [bound.label(v) for v in "abcab"] == ["a", "b", OTHER, "a", "b"]
    assert bound.overflowed == 1
    fixed = CategoryBound(3, ["x", "y"])
    assert [fixed.label(v) for v in "xzy"] == ["x", OTHER, "y"]


def test_ten_thousand_distinct_values_keep_the_bound_and_memory_flat() -> None:
    bound = CategoryBound(20)
    labels = {bound.label(f"v{i}") for i in range(1000)}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    labels |= {bound.label(f"w{i}") for i in range(10_000)}
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(labels) == 21 and OTHER in labels
    assert bound.overflowed == 10_980
    assert grown < 10_000  # far less than one byte per value seen
