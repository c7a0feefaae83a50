"""The report's canary section, from the decisions a canary recorded, and a canary
route's promotion criteria taking their margins from its guardrails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shadowproxy.cli import main as cli_main
from shadowproxy.config import RouteConfig
from shadowproxy.experiments.canary import Canary, state_path
from shadowproxy.experiments.promotion import DEFAULT, for_canary
from tests import synthetic
from tests.support import write_config

GUARDRAILS = [
    {"metric": "error_rate", "max_increase": 0.03},
    {"metric": "p99_latency_ms", "max_increase_ratio": 1.5},
]


def canary_route(**changes: Any) -> dict[str, Any]:
    return {
        "name": "digits",
        "match": {"path_prefix": "/digits"},
        "production": {"url": "http://127.0.0.1:1"},
        "mode": "canary",
        "canary": {
            "candidate": {"name": "v2", "url": "http://127.0.0.1:2"},
            "steps": [10, 50, 100],
            "step_min_requests": 50,
            "step_min_duration_s": 1,
            "guardrail_min_samples": 30,
            "guardrails": GUARDRAILS,
        },
        **changes,
    }


ERROR_ONLY = canary_route()
ERROR_ONLY["canary"] = {**ERROR_ONLY["canary"], "guardrails": GUARDRAILS[:1]}


def test_a_canary_route_decides_on_its_guardrails_limits() -> None:
    route = RouteConfig.model_validate(canary_route(promotion={"min_labels": 10}))
    assert route.canary is not None
    promotion = for_canary(route.promotion, route.canary.guardrails)
    assert promotion.error_rate.max_increase == 0.03
    assert promotion.latency_p99.max_ratio == 1.5
    assert promotion.disagreement == DEFAULT.disagreement  # no disagreement guardrail
    assert promotion.min_labels == 10


def run_canary(state_dir: Path) -> dict[str, Any]:
    """The canary state machine through two advances, then a failing step, with the
    state file written as the proxy writes it."""
    route = RouteConfig.model_validate(ERROR_ONLY)
    assert route.canary is not None
    canary = Canary(route.canary, now=1_714_550_400.0)
    clock = 1_714_550_400.0
    window = canary.new_window()
    for errors in (0, 0, 0, 0, 0, 300):
        if window.epoch != canary.epoch:
            window = canary.new_window()
        for i in range(400):
            window.record("candidate", error=i < errors, latency_ms=10.0 + i % 7)
            window.record("production", error=False, latency_ms=10.0 + i % 5)
        clock += 5
        canary.evaluate(clock, window)
    state = canary.to_dict()
    path = Path(state_path(str(state_dir), "digits"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    return state


def test_the_canary_section_shows_each_decision_and_its_guardrail_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic.generate(tmp_path / "rec", synthetic.example_spec(requests=300))
    state = run_canary(tmp_path / "state")
    actions = [d["action"] for d in state["decisions"]]
    assert actions == ["advance", "advance", "rollback"], actions
    config = write_config(tmp_path / "cfg", [ERROR_ONLY], state_dir=str(tmp_path / "state"))
    html, summary = tmp_path / "r.html", tmp_path / "s.json"
    code = cli_main(
        ["report", str(tmp_path / "rec"), "--config", str(config), "--out", str(html),
         "--json", str(summary)]
    )  # fmt: skip
    assert code == 0
    (history,) = json.loads(summary.read_text())["canaries"]
    assert history["route"] == "digits" and history["status"] == "rolled_back"
    steps = history["decisions"]
    assert [(s["action"], s["from_percent"], s["percent"]) for s in steps] == [
        ("advance", 10, 50),
        ("advance", 50, 100),
        ("rollback", 100, 0),
    ]
    failing = steps[-1]["guardrails"][0]
    assert failing["metric"] == "error_rate" and failing["verdict"] == "fail"
    assert failing["limit"] == 0.03 and failing["lower"] > 0.03
    assert steps[0]["candidate_requests"] == 400
    page = html.read_text()
    assert '<section id="canaries"><h2>Canary</h2>' in page
    assert page.count("error_rate ") >= 3 and "rollback" in page
    out = capsys.readouterr().out
    assert "canary digits: v2 rolled_back at 0%" in out


def test_a_canary_without_a_state_file_yet_is_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic.generate(tmp_path / "rec", synthetic.example_spec(requests=300))
    config = write_config(tmp_path / "cfg", [canary_route()], state_dir=str(tmp_path / "none"))
    assert cli_main(["report", str(tmp_path / "rec"), "--config", str(config)]) == 0
    assert "canary digits: no recorded decisions at" in capsys.readouterr().out
