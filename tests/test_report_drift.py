"""The Drift analysis on plain rows: windows, flags, jumps, invariants; and the
false-alarm rate of the flag rule on recordings without a shift."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shadowproxy import cli
from shadowproxy.monitor.spec import MonitorConfig
from shadowproxy.recording.schema import TELEMETRY_SCHEMA, telemetry_row
from shadowproxy.records import Observation, ProductionResult, RequestInfo
from shadowproxy.report import drift

MONITOR = MonitorConfig.model_validate(
    {
        "features": [
            {"name": "sqft", "path": "$.instances[*][1]", "kind": "numeric"},
            {"name": "rooms", "path": "$.instances[*][2]", "kind": "numeric"},
            {"name": "country", "path": "$.country", "kind": "categorical"},
        ],
        "invariants": [
            {"name": "price_non_negative", "target": "prediction", "min": 0},
            {"name": "known_country", "target": "request", "path": "$.country", "in": ["US", "DE"]},
        ],
        "jump_window": 200,
    }
)
COUNTRIES = ["US", "DE", "FR", "JP"]


def answers(
    seed: int, n: int, *, shift_at: int | None = None, release_at: int | None = None
) -> list[drift.Answer]:
    """``n`` watched answers a second apart; sqft moves by 2 sd from ``shift_at`` and the
    model (version v2) adds about 1 sd to every price from ``release_at``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sqft = rng.gauss(100 + (40 if shift_at is not None and i >= shift_at else 0), 20)
        rooms = rng.randint(1, 6)
        country = rng.choices(COUNTRIES, weights=[5, 3, 1, 1])[0]
        released = release_at is not None and i >= release_at
        price = rng.gauss(10 + rooms + (2.5 if released else 0.0), 2)
        violations = ("price_non_negative",) if price < 0 else ()
        out.append(
            drift.Answer(
                request_id=f"r{i}",
                ts=1_700_000_000 + i,
                request={"instances": [[1, sqft, rooms, 0]], "country": country},
                prediction=[price],
                version="v2" if released else "v1",
                violations=violations,
                request_violations=("known_country",) if country not in ("US", "DE") else (),
            )
        )
    return out


def analyse(rows: list[drift.Answer]) -> drift.RouteDrift:
    reference, current, how = drift.split(rows, None, None, None)
    return drift.route_drift("price", MONITOR, reference, current, how=how)


def test_a_shift_and_a_release_flag_the_feature_and_the_jump_only() -> None:
    result = analyse(answers(1, 1600, shift_at=800, release_at=1400))
    assert [(d.name, d.flagged) for d in result.features] == [
        ("sqft", True),
        ("rooms", False),
        ("country", False),
    ]
    assert result.prediction is not None and not result.prediction.flagged
    assert len(result.jumps) == 1
    jump = result.jumps[0]
    assert (jump.from_version, jump.to_version, jump.flagged) == ("v1", "v2", True)
    assert jump.at == 1_700_000_000 + 1400
    sqft = result.features[0]
    assert sqft.effect["mean_shift"] == pytest.approx(40, abs=5)


def test_invariants_are_counted_with_wilson_intervals_and_examples() -> None:
    rows = answers(2, 400)
    result = analyse(rows)
    by_key = {(i.name, i.role): i for i in result.invariants}
    country = by_key["known_country", "request"]
    expected = [a.request_id for a in rows if a.request["country"] not in ("US", "DE")]
    assert (country.count, country.n) == (len(expected), 400)
    assert country.examples == tuple(expected[:5])
    assert country.ci95[0] < country.rate < country.ci95[1]
    assert by_key["price_non_negative", "production"].n == 400


def test_reference_windows() -> None:
    rows = answers(3, 100)
    fixed = MonitorConfig.model_validate(
        {"reference": {"from": "2023-11-14T22:13:20", "to": "2023-11-14T22:13:50"}}
    )
    ref, current, _ = drift.split(rows, fixed.reference, None, None)
    assert (len(ref), len(current)) == (30, 70)
    last_days = MonitorConfig.model_validate({"reference": {"last_days": 1}}).reference
    since = datetime.fromtimestamp(1_700_000_050, UTC)
    ref, current, _ = drift.split(rows, last_days, since, None)
    assert (len(ref), len(current)) == (50, 50)


FALSE_ALARM_SPLITS = 100


def false_alarms(splits: int = FALSE_ALARM_SPLITS, n: int = 1000) -> int:
    """Recordings without a shift, each split in reference and current halves: how many
    flag anything (a feature or the prediction)."""
    flagged = 0
    for seed in range(splits):
        result = analyse(answers(1000 + seed, n))
        tested = [*result.features, *([result.prediction] if result.prediction else [])]
        flagged += any(d.flagged for d in tested)
    return flagged


def test_no_shift_flags_at_most_five_percent_of_recordings() -> None:
    assert false_alarms() <= FALSE_ALARM_SPLITS * 0.05


def write_telemetry(root: Path, seed: int, shift: float, start: float) -> None:
    """600 telemetry rows of route ``m`` (x ~ N(shift, 1)), as the writer lays them out."""
    rng = random.Random(seed)
    rows = []
    for i in range(600):
        body = orjson.dumps({"x": rng.gauss(shift, 1)})
        request = RequestInfo(
            request_id=f"r{seed}-{i}",
            ts=start + i,
            route="m",
            method="POST",
            path="/",
            query="",
            headers=[],
            body=body,
            body_complete=True,
        )
        answer = ProductionResult(
            status=200,
            latency_ms=1.0,
            error=None,
            body=b'{"predictions":[1.5]}',
            body_truncated=False,
            content_type=None,
        )
        observation = Observation(request, answer)
        rows.append(
            telemetry_row(observation, "[1.5]", [], [], "v1", bodies=True, max_body_bytes=65536)
        )
    folder = root / "telemetry" / "route=m" / "date=2025-12-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TELEMETRY_SCHEMA), folder / "a.parquet")


@pytest.mark.parametrize(("shift", "flagged"), [(1.0, True), (0.0, False)])
def test_a_telemetry_only_recording_against_another_recording(
    tmp_path: Path, shift: float, flagged: bool
) -> None:
    """A route that only watches production (no shadow, no pairs) compared with a
    reference recording (``reference: {root: ...}``), through the CLI."""
    write_telemetry(tmp_path / "reference", 1, 0.0, 1_764_547_200)
    write_telemetry(tmp_path / "current", 2, shift, 1_764_550_000)
    route = {
        "name": "m",
        "match": {"path_prefix": "/"},
        "production": {"url": "http://127.0.0.1:1"},
        "compare": {"prediction": "kserve-v1"},
        "monitor": {
            "features": [{"name": "x", "path": "$.x", "kind": "numeric"}],
            "reference": {"root": str(tmp_path / "reference")},
        },
    }
    config = tmp_path / "shadowproxy.yaml"
    config.write_text(yaml.safe_dump({"routes": [route]}))
    out = tmp_path / "summary.json"
    code = cli.main(
        [
            "report",
            str(tmp_path / "current"),
            "--config",
            str(config),
            "--json",
            str(out),
            "--out",
            str(tmp_path / "report.html"),
        ]
    )
    assert code == 0
    [feature] = json.loads(out.read_text())["drift"]["m"]["features"]
    assert (feature["name"], feature["flagged"]) == ("x", flagged)
    assert feature["effect"]["n_reference"] == feature["effect"]["n_current"] == 600
    assert '<section id="drift">' in (tmp_path / "report.html").read_text()


def test_a_truncated_telemetry_file_is_bad_input_or_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cut-off telemetry file gets the report's usual treatment: exit 2 naming it, or
    counted and stepped over with --skip-bad-files; never a traceback."""
    write_telemetry(tmp_path / "current", 2, 0.0, 1_764_550_000)
    folder = tmp_path / "current" / "telemetry" / "route=m" / "date=2025-12-01"
    good = (folder / "a.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(good[: len(good) // 2])
    route = {
        "name": "m",
        "match": {"path_prefix": "/"},
        "production": {"url": "http://127.0.0.1:1"},
        "monitor": {"features": [{"name": "x", "path": "$.x", "kind": "numeric"}]},
    }
    config = tmp_path / "shadowproxy.yaml"
    config.write_text(yaml.safe_dump({"routes": [route]}))
    args = ["report", str(tmp_path / "current"), "--config", str(config)]
    assert cli.main(args) == 2
    assert "b.parquet" in capsys.readouterr().err
    out = tmp_path / "summary.json"
    assert cli.main([*args, "--skip-bad-files", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert any("b.parquet" in str(entry) for entry in summary["skipped_files"])
