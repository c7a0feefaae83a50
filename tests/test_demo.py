"""``shadowproxy demo`` as a user runs it: real models, real processes, a real report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the demo needs the demo extra (scikit-learn)")


@pytest.mark.timeout(120)
def test_demo_trains_serves_shadows_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "demo", "--out", str(out), "--rate", "150"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "candidate-v2" in result.stdout and "report:" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    pairs = {pair["shadow"]: pair for pair in summary["pairs"]}
    assert set(pairs) == {"candidate-v2", "baseline-v1"}
    rows = pairs["candidate-v2"]["rows"]
    assert rows == pairs["baseline-v1"]["rows"] == 899
    # A replica of production agrees with it; a different model does not, always.
    assert pairs["baseline-v1"]["agreement_rate"] == 1.0
    assert 0.5 < pairs["candidate-v2"]["agreement_rate"] < 1.0
    assert pairs["candidate-v2"]["labels"]["task"] == "classification"
    assert pairs["candidate-v2"]["labels"]["n"] > 0
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    # It ends with a decision for its candidate, reached through --gate as CD would.
    assert "--config" in result.stdout and "--gate" in result.stdout
    status = pairs["candidate-v2"]["decision"]["status"]
    assert status in ("PROMOTE", "HOLD", "REJECT")
    assert f"decision digits / candidate-v2: {status}" in result.stdout
    assert pairs["baseline-v1"]["decision"] is None
    code = {"PROMOTE": 0, "HOLD": 3, "REJECT": 4}[status]
    assert f"gate: exit status {code} ({status}" in result.stdout
