"""The soak benchmark's short form: the real proxy through a black-holed and a slow shadow.

``benchmarks/soak.py --short`` runs ``shadowproxy serve`` (recording on, writer process)
at 200 req/s for 20 s while the shadow is healthy, black-holed, healthy, slow, healthy,
and checks memory, fds and that every request is a recorded row or a counted drop. The
full form (10 minutes at 500 req/s) is run by hand; its figures are in docs/performance.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


@pytest.mark.timeout(120)
def test_short_soak_accounts_for_every_request_within_bounds(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(SOAK), "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    soak = json.loads(out.read_text())
    assert soak["passed"], soak["table"]

    accounting = soak["accounting"]
    sent = accounting["sent"]
    assert sent == 4000
    assert accounting["answered"] == sent
    assert sum(accounting["outcomes"].values()) == sent
    assert accounting["rows"] + sum(accounting["dropped"].values()) == sent
    assert accounting["rows"] == accounting["written"] == accounting["distinct_request_ids"]

    phases = {phase["phase"]: phase for phase in soak["phases"]}
    assert sum(phase["requests"] for phase in phases.values()) == sent
    for phase in phases.values():
        assert phase["answered"] == phase["requests"], phase
        assert phase["errors"] == 0, phase
    # With nothing dropped, each phase's rows are its requests, sorted by what the shadow did.
    if not any(accounting["dropped"].values()):
        for phase in phases.values():
            assert sum(phase["rows"].values()) == phase["requests"], phase
    blackhole, slow = phases["2 blackhole"]["rows"], phases["4 slow"]["rows"]
    assert blackhole.get("timeout", 0) > 0 and blackhole.get("dropped", 0) > 0
    assert slow.get("ok", 0) == phases["4 slow"]["requests"]
    assert soak["shadow_received"].get("slow", 0) > 0
