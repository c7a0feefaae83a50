"""``shadowproxy demo --scenario ...`` as a user runs it: real models, real processes, the
proxy's own decisions, the report's own verdicts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

pytest.importorskip("sklearn", reason="the demo needs the demo extra (scikit-learn)")

from shadowproxy import cli, demo
from shadowproxy.demo import ab, canary, model_server


def run(out: Path, scenario: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "shadowproxy", "demo", "--scenario", scenario,
               "--out", str(out), *extra]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def written_route(out: Path) -> dict[str, object]:
    assert (out / "shadowproxy.yaml").is_file()
    route = yaml.safe_load((out / "routes" / "digits.yaml").read_text())
    assert isinstance(route, dict)
    return route


@pytest.mark.timeout(120)
def test_a_failing_canary_is_rolled_back_by_the_proxy_with_its_evidence(tmp_path: Path) -> None:
    out = tmp_path / "canary-bad"
    result = run(out, "canary-bad")
    assert "ROLLBACK by auto (5% -> 0%, rolled_back)" in result.stdout
    assert "evidence: candidate" in result.stdout
    assert "final state: rolled_back at 0%" in result.stdout
    assert f"afterwards, {canary.AFTERWARDS} requests were answered: 200 by production" in (
        result.stdout
    )
    assert "canary rollback by auto" in result.stderr  # the proxy's own log line
    state = json.loads((out / "state" / "canary-digits.json").read_text())
    assert state["status"] == "rolled_back"
    (rollback,) = state["decisions"]
    (guardrail,) = rollback["evidence"]["guardrails"]
    assert guardrail["metric"] == "error_rate" and guardrail["verdict"] == "fail"
    assert guardrail["lower"] > canary.MAX_INCREASE
    assert written_route(out)["mode"] == "canary"
    # The report shows the canary's recorded decisions, not only "no outcomes".
    assert "canary digits: v2 rolled_back at 0%" in result.stdout
    (history,) = json.loads((out / "summary.json").read_text())["canaries"]
    assert [d["action"] for d in history["decisions"]] == ["rollback"]
    assert history["decisions"][0]["guardrails"][0]["verdict"] == "fail"
    assert '<section id="canaries">' in (out / "report.html").read_text()


@pytest.mark.timeout(120)
def test_a_healthy_canary_advances_through_every_step(tmp_path: Path) -> None:
    out = tmp_path / "canary-good"
    result = run(out, "canary-good")
    assert "steps run: 5% -> 25% -> 50% -> 100%" in result.stdout
    assert "final state: completed at 100%" in result.stdout
    assert "200 by v2" in result.stdout
    state = json.loads((out / "state" / "canary-digits.json").read_text())
    assert state["status"] == "completed"
    assert [d["action"] for d in state["decisions"]] == ["advance"] * 3


@pytest.mark.timeout(120)
def test_an_ab_test_with_a_known_effect_contains_it_and_passes_the_split(tmp_path: Path) -> None:
    out = tmp_path / "ab"
    result = run(out, "ab")
    assert "CI contains the true effect" in result.stdout
    assert re.search(r"SRM check p=\S+ passes", result.stdout), result.stdout
    assert "MISMATCH" not in result.stdout
    (experiment,) = json.loads((out / "summary.json").read_text())["experiments"]
    treatment = next(arm for arm in experiment["arms"] if arm["name"] == "treatment")
    low, high = treatment["difference_ci95"]
    assert low <= ab.TRUE_EFFECT <= high
    assert experiment["srm"]["mismatch"] is False
    assert sum(experiment["srm"]["observed"].values()) == ab.USERS
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert written_route(out)["mode"] == "ab"


@pytest.mark.timeout(120)
def test_a_skewed_split_fails_the_sample_ratio_check(tmp_path: Path) -> None:
    out = tmp_path / "ab-skewed"
    result = run(out, "ab-skewed")
    assert "FAILS (sample ratio mismatch)" in result.stdout
    assert "WARNING: Sample ratio mismatch" in result.stdout
    (experiment,) = json.loads((out / "summary.json").read_text())["experiments"]
    observed = experiment["srm"]["observed"]
    assert experiment["srm"]["mismatch"] is True
    assert observed["treatment"] < 0.8 * observed["control"]


@pytest.mark.timeout(120)
def test_chaos_faults_show_in_the_metrics_and_the_report(tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    result = run(out, "chaos")
    for fault in ("delay", "abort", "corrupt"):
        assert f'shadowproxy_chaos_injected_total{{fault="{fault}"' in result.stdout
    assert result.stdout.count(": noticed") == 3
    checks = json.loads((out / "summary.json").read_text())["chaos"]
    assert Counter(check["fault"] for check in checks) == Counter(["delay", "abort", "corrupt"])
    assert all(check["noticed"] is True and check["rows"] > 0 for check in checks)
    assert len(written_route(out)["chaos"]) == 3  # type: ignore[arg-type]


def test_every_scenario_the_cli_offers_exists() -> None:
    assert tuple(demo.SCENARIOS) == cli.DEMO_SCENARIOS


def test_keep_running_is_for_the_shadow_scenario_only(tmp_path: Path) -> None:
    code = cli.main(["demo", "--scenario", "ab", "--keep-running", "--out", str(tmp_path)])
    assert code == 2


class Constant:
    def predict(self, instances: list[object]) -> list[int]:
        return [3 for _ in instances]


async def test_the_model_server_fails_a_seeded_share_of_requests() -> None:
    async def statuses(seed: int) -> list[int]:
        app = model_server.build_app(Constant(), "digits-v2", error_rate=0.2, seed=seed)
        async with TestClient(TestServer(app)) as client:
            seen = []
            for _ in range(500):
                response = await client.post("/v1/models/digits:predict", json={"instances": [[0]]})
                seen.append(response.status)
            return seen

    first = await statuses(1)
    assert set(first) == {200, 500}
    assert 70 <= first.count(500) <= 130  # 20% of 500
    assert await statuses(1) == first  # seeded: the same requests fail every run
