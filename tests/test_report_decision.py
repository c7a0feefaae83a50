"""PROMOTE, HOLD, REJECT: the pre-registered promotion criteria, the decision, the
``promotion:`` config block and ``shadowproxy report --config --gate``."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.cli import main as cli_main
from shadowproxy.config import load_config
from shadowproxy.errors import ConfigError
from shadowproxy.experiments.promotion import DEFAULT, Promotion
from shadowproxy.report import decision, groundtruth
from shadowproxy.report.model import (
    Interval,
    Latency,
    NoiseFloor,
    PairReport,
    Percentiles,
)
from tests.synthetic import DatasetSpec, RouteSpec, ShadowSpec, generate

ROUTE = {
    "name": "churn",
    "match": {"path_prefix": "/v1/churn"},
    "production": {"url": "http://127.0.0.1:8001"},
    "shadows": [{"name": "cand", "url": "http://127.0.0.1:8002"}],
}


def candidate(**changes: Any) -> PairReport:
    """A candidate that meets every default criterion with room to spare."""
    base = PairReport(
        route="churn",
        shadow="cand",
        role="candidate",
        rows=20_000,
        outcomes={"ok": 20_000, "error": 0, "timeout": 0, "dropped": 0, "skipped": 0},
        compared=20_000,
        agreed=19_900,
        agreement_rate=0.995,
        agreement_ci=Interval(0.99, 0.996),
        comparator="label",
        prod_5xx_rate=0.0,
        shadow_5xx_rate=0.0,
        status_mismatch=0,
        latency=Latency(
            Percentiles(10, 20, 30),
            Percentiles(10, 20, 30.3),
            20_000,
            20_000,
            None,
            None,
            None,
            p99_log_se=0.02,
        ),
        errors=(20_000, 10, 10),
        labels=groundtruth.classification_result(
            {"n": 2000, "b": 30, "c": 34, "prod_right": 1700, "shadow_right": 1704}
        ),
    )
    return replace(base, **changes)


def statuses(pair: PairReport, promotion: Promotion = DEFAULT) -> tuple[str, dict[str, str]]:
    result = decision.decide(pair, promotion)
    return result.status, {c.name: c.result for c in result.criteria}


# --- the decision, pure --------------------------------------------------------------


def test_a_candidate_inside_every_margin_is_promoted() -> None:
    status, results = statuses(candidate())
    assert status == "PROMOTE"
    assert results == {
        "accuracy": "pass",
        "disagreement": "pass",
        "latency_p99": "pass",
        "error_rate": "pass",
    }


def test_too_few_labels_holds_and_says_how_many_more() -> None:
    labels = groundtruth.classification_result(
        {"n": 120, "b": 2, "c": 3, "prod_right": 100, "shadow_right": 101}
    )
    result = decision.decide(candidate(labels=labels), DEFAULT)
    assert result.status == "HOLD"
    accuracy = next(c for c in result.criteria if c.name == "accuracy")
    assert accuracy.result == "open"
    assert accuracy.needed is not None and accuracy.needed >= 500 - 120
    assert f"accuracy needs ~{accuracy.needed:,} more labels" in result.sentence


def test_no_labels_at_all_holds_on_min_labels() -> None:
    result = decision.decide(candidate(labels=None), DEFAULT)
    assert result.status == "HOLD"
    assert "accuracy has no data yet" in result.sentence and "needs 500 labels" in result.sentence


def test_a_clearly_worse_candidate_is_rejected() -> None:
    labels = groundtruth.classification_result(
        {"n": 2000, "b": 120, "c": 40, "prod_right": 1700, "shadow_right": 1620}
    )
    status, results = statuses(candidate(labels=labels))
    assert status == "REJECT"
    assert results["accuracy"] == "fail"


def test_the_p99_ratio_and_the_error_rate_reject() -> None:
    slow = replace(candidate().latency, shadow=Percentiles(10, 20, 45.0))
    assert statuses(candidate(latency=slow))[1]["latency_p99"] == "fail"
    assert statuses(candidate(errors=(20_000, 400, 10)))[1]["error_rate"] == "fail"


def test_disagreement_against_the_baseline_or_the_absolute_max() -> None:
    floor = NoiseFloor(("base",), 20_000, 100, 0.005, Interval(0.004, 0.006), None, None)
    # 4% disagreement: 3.5 points over a 0.5% baseline (margin 2) fails, but passes
    # an absolute max of 5% without a baseline.
    pair = candidate(agreed=19_200, noise_floor=floor)
    assert statuses(pair)[1]["disagreement"] == "fail"
    assert statuses(replace(pair, noise_floor=None))[1]["disagreement"] == "pass"


def test_the_route_margins_are_used() -> None:
    labels = groundtruth.classification_result(
        {"n": 4000, "b": 200, "c": 150, "prod_right": 3400, "shadow_right": 3350}
    )
    pair = candidate(labels=labels)
    assert statuses(pair)[1]["accuracy"] != "pass"  # -1.25 pts against a 1-point margin
    loose = Promotion.model_validate({"accuracy": {"non_inferiority_margin": 0.05}})
    assert statuses(pair, loose)[1]["accuracy"] == "pass"


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(50, 5000),
    b=st.integers(0, 200),
    c=st.integers(0, 200),
    margin=st.floats(0.0, 0.05),
)
def test_the_p_value_and_the_bounds_never_disagree(n: int, b: int, c: int, margin: float) -> None:
    if b + c > n:
        return
    labels = groundtruth.classification_result(
        {"n": n, "b": b, "c": c, "prod_right": b, "shadow_right": c}
    )
    promotion = Promotion.model_validate(
        {"min_labels": 0, "accuracy": {"non_inferiority_margin": margin}}
    )
    accuracy = decision.decide(candidate(labels=labels), promotion).criteria[0]
    assert accuracy.interval is not None and accuracy.p_value is not None
    clears = accuracy.interval.lo > -margin
    if not math.isclose(accuracy.interval.lo, -margin, abs_tol=1e-9):
        assert clears == (accuracy.p_value < 0.05)
        assert (accuracy.result == "pass") == clears


def test_the_worst_status_decides_the_gate() -> None:
    assert decision.worst(["PROMOTE", "REJECT", "HOLD"]) == "REJECT"
    assert decision.worst(["PROMOTE", "HOLD"]) == "HOLD"
    assert decision.worst(["PROMOTE"]) == "PROMOTE"
    assert decision.worst([]) is None


# --- the promotion: block ------------------------------------------------------------


def layout(tmp_path: Path, route: dict[str, Any]) -> Path:
    (tmp_path / "routes").mkdir(parents=True, exist_ok=True)
    (tmp_path / "routes" / "churn.yaml").write_text(yaml.safe_dump(route))
    path = tmp_path / "shadowproxy.yaml"
    path.write_text(yaml.safe_dump({"routes_dir": "routes"}))
    return path


def test_the_promotion_block_defaults_and_overrides(tmp_path: Path) -> None:
    route = load_config(layout(tmp_path, ROUTE), environ={}).routes[0]
    assert route.promotion == DEFAULT
    assert route.promotion.min_labels == 500
    assert route.promotion.accuracy.non_inferiority_margin == 0.01
    assert route.promotion.disagreement.max_excess_over_baseline == 0.02
    assert route.promotion.disagreement.max == 0.05
    assert route.promotion.latency_p99.max_ratio == 1.2
    assert route.promotion.error_rate.max_increase == 0.005
    custom = {**ROUTE, "promotion": {"min_labels": 50, "latency_p99": {"max_ratio": 1.5}}}
    route = load_config(layout(tmp_path, custom), environ={}).routes[0]
    assert route.promotion.min_labels == 50 and route.promotion.latency_p99.max_ratio == 1.5
    assert route.promotion.error_rate.max_increase == 0.005


@pytest.mark.parametrize(
    ("block", "field", "words"),
    [
        ({"latency_p99": {"max_ratio": 0.9}}, "promotion.latency_p99.max_ratio", "1"),
        ({"accuracy": {"margin": 0.01}}, "promotion.accuracy.margin", ""),
        ({"error_rate": {"max_increase": 2}}, "promotion.error_rate.max_increase", "1"),
        ({"min_labels": -1}, "promotion.min_labels", "0"),
        ({"accuracy": {"non_inferiority_margin": ".nan"}}, "promotion.accuracy", ""),
    ],
)
def test_a_bad_promotion_block_names_file_and_field(
    tmp_path: Path, block: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(layout(tmp_path, {**ROUTE, "promotion": block}), environ={})
    error = caught.value
    assert error.file is not None and error.file.endswith("churn.yaml")
    assert error.field is not None and error.field.startswith(field)
    assert words in error.message
    with pytest.raises(Exception, match="frozen"):
        DEFAULT.min_labels = 3  # type: ignore[misc]


# --- the gate, on recordings ---------------------------------------------------------


def recording(tmp_path: Path, *, labeled: int, disagree: float) -> Path:
    root = tmp_path / "rec"
    spec = DatasetSpec(
        routes=(
            RouteSpec(
                "churn",
                4000,
                (
                    ShadowSpec("cand", disagree=disagree, fixes=6, breaks=4),
                    ShadowSpec("base", role="baseline", disagree=0.01),
                ),
                labeled=labeled,
            ),
        ),
        stale_feedback=False,
    )
    generate(root, spec)
    return root


@pytest.mark.parametrize(
    ("labeled", "disagree", "status", "code"),
    [(2000, 0.01, "PROMOTE", 0), (100, 0.01, "HOLD", 3), (2000, 0.1, "REJECT", 4)],
)
def test_gate_exit_codes_and_one_line_per_candidate(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    labeled: int,
    disagree: float,
    status: str,
    code: int,
) -> None:
    root = recording(tmp_path, labeled=labeled, disagree=disagree)
    summary_path = tmp_path / "summary.json"
    assert cli_main(["report", str(root), "--gate", "--json", str(summary_path)]) == code
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("decision ")]
    assert lines == [next(line for line in lines if "churn / cand" in line)]
    assert lines[0].startswith(f"decision churn / cand: {status}")
    data = json.loads(summary_path.read_text())
    cand = next(p for p in data["pairs"] if p["shadow"] == "cand")
    base = next(p for p in data["pairs"] if p["shadow"] == "base")
    assert base["decision"] is None
    assert cand["decision"]["status"] == status
    names = [c["name"] for c in cand["decision"]["criteria"]]
    assert names == ["accuracy", "disagreement", "latency_p99", "error_rate"]
    for criterion in cand["decision"]["criteria"]:
        assert {"name", "estimate", "interval", "p_value", "margin", "result"} <= set(criterion)
        assert criterion["result"] in ("pass", "fail", "open")
    # Without --gate the exit status stays 0 whatever the decision.
    assert cli_main(["report", str(root)]) == 0


def test_gate_uses_the_config_margins_and_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = recording(tmp_path, labeled=100, disagree=0.01)
    out = tmp_path / "summary.json"
    assert cli_main(["report", str(root), "--gate", "--json", str(out)]) == 3
    accuracy = _cand(out)["decision"]["criteria"][0]
    assert accuracy["result"] == "open"  # 100 labels, below the default min_labels 500
    loose = {"min_labels": 50, "accuracy": {"non_inferiority_margin": 0.2}}
    config = layout(tmp_path / "cfg", {**ROUTE, "promotion": loose})
    cli_main(["report", str(root), "--gate", "--config", str(config), "--json", str(out)])
    accuracy = _cand(out)["decision"]["criteria"][0]
    assert accuracy["result"] == "pass" and accuracy["margin"] == -0.2
    capsys.readouterr()
    bad = layout(tmp_path / "bad", {**ROUTE, "promotion": {"latency_p99": {"max_ratio": 0.5}}})
    assert cli_main(["report", str(root), "--gate", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "churn.yaml: promotion.latency_p99.max_ratio" in err


def _cand(path: Path) -> dict[str, Any]:
    pairs: list[dict[str, Any]] = json.loads(path.read_text())["pairs"]
    return next(p for p in pairs if p["shadow"] == "cand")


def test_gate_without_a_candidate_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "rec"
    generate(
        root,
        DatasetSpec(routes=(RouteSpec("churn", 300, (ShadowSpec("b", role="baseline"),)),)),
    )
    assert cli_main(["report", str(root), "--gate"]) == 2
    assert "no candidate" in capsys.readouterr().err
