"""The report's chaos section, and injected rows kept out of every other figure.

A synthetic recording (known truth) gets extra rows carrying injected faults, written
through the real schema as the recorder writes them; every figure of every pair must
stay what it was without them, and the chaos section must find exactly those rows.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from shadowproxy.recording.schema import FEEDBACK_SCHEMA, PAIRS_SCHEMA
from shadowproxy.report import (
    Filters,
    ReportInputError,
    ReportOptions,
    build_report,
    chaos,
    render,
    summary,
    table,
)
from shadowproxy.report.model import ChaosCheck, Report
from tests import synthetic
from tests.synthetic import DatasetSpec, RouteSpec, ShadowSpec

NOW = datetime(2024, 6, 1, tzinfo=UTC)
TS = datetime(2024, 5, 1, 6, tzinfo=UTC)
SPEC = DatasetSpec(
    routes=(
        RouteSpec(
            "churn",
            600,
            (
                ShadowSpec("candidate", disagree=0.1, fixes=10, breaks=5),
                ShadowSpec("baseline", role="baseline", disagree=0.01),
            ),
            labeled=200,
        ),
    ),
    temp_file=False,
)


def make(root: Path) -> Report:
    return build_report(ReportOptions(root=str(root)), now=NOW, progress=False)


def chaos_row(n: int, shadow: str, **fields: Any) -> dict[str, Any]:
    base = {name: None for name in PAIRS_SCHEMA.names} | {
        "request_id": f"chaos-{n:04d}",
        "ts": TS + timedelta(seconds=n),
        "shadow": shadow,
        "role": "baseline" if shadow == "baseline" else "candidate",
        "method": "POST",
        "path": "/v1/models/churn:predict",
        "query": "",
        "prod_status": 200,
        "prod_latency_ms": 20.0,
        "shadow_outcome": "ok",
        "shadow_status": 200,
        "shadow_latency_ms": 25.0,
        "prod_prediction": '"cat"',
        "shadow_prediction": '"cat"',
        "agree": True,
        "comparator": "label",
        "diff_score": 0.0,
    }
    return base | fields


def injected_rows() -> list[dict[str, Any]]:
    rows = [
        chaos_row(n, "candidate", chaos="delay_ms=500", shadow_latency_ms=500.0 + n)
        for n in range(40)
    ]
    rows += [
        chaos_row(100 + n, "candidate", chaos="abort_status=503", shadow_status=503,
                  shadow_prediction=None, agree=None, comparator="label", diff_score=None,
                  compare_detail="shadow status 503")
        for n in range(10)
    ]  # fmt: skip
    rows += [
        chaos_row(200 + n, "candidate", chaos="corrupt_prediction",
                  shadow_prediction='"cat~chaos"', agree=False, diff_score=1.0)
        for n in range(20)
    ]  # fmt: skip
    # A corruption that went unseen: the comparator still says "agree".
    rows += [chaos_row(300 + n, "baseline", chaos="corrupt_prediction") for n in range(5)]
    # Production delayed on 6 requests; each has a row per shadow.
    for n in range(6):
        for shadow in ("candidate", "baseline"):
            rows.append(chaos_row(400 + n, shadow, prod_chaos="delay_ms=100",
                                  prod_latency_ms=120.0 + n))  # fmt: skip
    return rows


def add_injected(root: Path, rows: list[dict[str, Any]]) -> None:
    """The injected rows, plus labels for them (so accuracy would move if they counted)."""
    directory = root / "pairs" / "route=churn" / "date=2024-05-01"
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), directory / "chaos.parquet")
    labels = [
        {"request_id": row["request_id"], "label": '"dog"', "ts": TS + timedelta(days=1)}
        for row in rows
    ]
    feedback = root / "feedback" / "date=2024-05-02"
    feedback.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(labels, schema=FEEDBACK_SCHEMA), feedback / "c.parquet")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Report, Path]:
    plain = tmp_path_factory.mktemp("plain") / "rec"
    synthetic.generate(plain, SPEC)
    with_chaos = tmp_path_factory.mktemp("chaos") / "rec"
    synthetic.generate(with_chaos, SPEC)
    add_injected(with_chaos, injected_rows())
    return make(plain), make(with_chaos), with_chaos


def figures(report: Report) -> list[dict[str, Any]]:
    out = []
    for pair in report.pairs:
        item = asdict(pair)
        item.pop("chaos_excluded")
        out.append(item)
    return out


def test_injected_rows_leave_every_pair_figure_unchanged(
    reports: tuple[Report, Report, Path],
) -> None:
    plain, with_chaos, _root = reports
    assert figures(with_chaos) == figures(plain)
    assert [p.labels.n for p in with_chaos.pairs if p.labels] == [200, 200]


def test_excluded_rows_are_counted_per_pair(reports: tuple[Report, Report, Path]) -> None:
    plain, with_chaos, _root = reports
    assert {p.shadow: p.chaos_excluded for p in plain.pairs} == {"candidate": 0, "baseline": 0}
    assert {p.shadow: p.chaos_excluded for p in with_chaos.pairs} == {
        "candidate": 40 + 10 + 20 + 6,
        "baseline": 5 + 6,
    }
    assert plain.chaos == []


def clean_median(root: Path, column: str, shadow: str | None) -> float:
    rows = ds.dataset(root / "pairs", format="parquet", partitioning="hive").to_table().to_pylist()
    clean = [r for r in rows if r["chaos"] is None and r["prod_chaos"] is None]
    if shadow is not None:
        return statistics.median(r[column] for r in clean if r["shadow"] == shadow)
    by_request = {r["request_id"]: r[column] for r in rows if r["prod_chaos"] is None}
    return statistics.median(by_request.values())


def test_the_chaos_section_finds_each_fault(reports: tuple[Report, Report, Path]) -> None:
    _plain, with_chaos, root = reports
    checks = {(c.target, c.fault): c for c in with_chaos.chaos}
    assert list(checks) == [
        ("baseline", "corrupt"),
        ("candidate", "abort"),
        ("candidate", "corrupt"),
        ("candidate", "delay"),
        ("production", "delay"),
    ]
    delay = checks[("candidate", "delay")]
    clean = clean_median(root, "shadow_latency_ms", "candidate")
    assert (delay.rows, delay.measured, delay.parameter) == (40, 40, 500.0)
    assert delay.injected == pytest.approx(519.5)
    assert delay.clean == pytest.approx(clean)
    assert delay.expected == pytest.approx(clean + 500)
    assert delay.noticed is True

    abort = checks[("candidate", "abort")]
    assert (abort.rows, abort.parameter, abort.measure) == (10, 503.0, "share with status 503")
    assert (abort.injected, abort.clean, abort.expected, abort.noticed) == (1.0, 0.0, 1.0, True)

    corrupt = checks[("candidate", "corrupt")]
    assert (corrupt.rows, corrupt.measured, corrupt.injected) == (20, 20, 1.0)
    assert corrupt.clean == pytest.approx(0.1)  # the synthetic candidate's disagreement
    assert corrupt.noticed is True

    unseen = checks[("baseline", "corrupt")]
    assert (unseen.rows, unseen.injected, unseen.noticed) == (5, 0.0, False)
    assert unseen.clean == pytest.approx(0.01)

    production = checks[("production", "delay")]
    assert production.rows == 6  # requests, not (request, shadow) rows
    assert production.injected == pytest.approx(122.5)
    assert production.clean == pytest.approx(clean_median(root, "prod_latency_ms", None))
    assert production.noticed is True


def test_summary_html_and_table_show_the_checks(reports: tuple[Report, Report, Path]) -> None:
    _plain, with_chaos, _root = reports
    data = json.loads(summary.dumps(with_chaos))
    assert {p["shadow"]: p["chaos_excluded"] for p in data["pairs"]} == {
        "candidate": 76,
        "baseline": 11,
    }
    by_fault = {(c["target"], c["fault"]): c for c in data["chaos"]}
    assert by_fault[("candidate", "abort")] == {
        "route": "churn", "target": "candidate", "fault": "abort", "parameter": 503.0,
        "rows": 10, "measure": "share with status 503", "measured": 10, "injected": 1.0,
        "clean": 0.0, "clean_rows": 600, "expected": 1.0, "noticed": True,
    }  # fmt: skip
    page = render.render(with_chaos)
    assert '<section id="chaos"><h2>Chaos experiments</h2>' in page
    assert "76 more rows carry injected faults" in page
    assert "<td>delay 500 ms</td><td>40</td>" in page
    assert '<span class="bad">no</span>' in page  # the unseen corruption
    out = StringIO()
    table.print_summary(with_chaos, out)
    printed = out.getvalue()
    lines = printed.splitlines()
    assert (
        "chaos churn / candidate: abort 503 on 10 rows: share with status 503 100.0% vs 0.0% without faults (expected 100.0%): noticed"
        in lines
    )
    assert (
        "chaos churn / baseline: corrupt on 5 rows: disagreement 0.0% vs 1.0% without faults (expected 100.0%): NOT noticed"
        in lines
    )
    assert (
        "chaos churn / production: delay 100 ms on 6 requests: median latency 122.5 ms vs "
        in printed
    )
    assert "Chaos experiments" not in render.render(reports[0])


def test_a_recording_from_before_the_chaos_columns(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    synthetic.generate(root, SPEC)
    for path in root.glob("pairs/*/*/*.parquet"):
        old = pq.read_table(path).drop_columns(["chaos", "prod_chaos"])
        pq.write_table(old, path)
    report = make(root)
    assert report.chaos == []
    assert [p.rows for p in report.pairs] == [600, 600]
    assert all(p.chaos_excluded == 0 for p in report.pairs)


def test_a_recording_with_only_injected_rows_still_reports_them(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    directory = root / "pairs" / "route=churn" / "date=2024-05-01"
    directory.mkdir(parents=True)
    rows = [chaos_row(n, "candidate", chaos="abort_status=503", shadow_status=503, agree=None)
            for n in range(3)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), directory / "a.parquet")
    report = make(root)
    assert report.pairs == []
    [check] = report.chaos
    assert (check.rows, check.injected, check.clean, check.noticed) == (3, 1.0, None, None)
    assert "Chaos experiments" in render.render(report)


def test_no_rows_at_all_is_still_an_error(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    synthetic.generate(root, SPEC)
    options = ReportOptions(root=str(root), filters=Filters(routes=("nope",)))
    with pytest.raises(ReportInputError, match="no rows"):
        build_report(options, now=NOW, progress=False)


# --- the builder (pure) ------------------------------------------------------------------


def row(**fields: Any) -> dict[str, Any]:
    return {
        "route": "r", "side": "shadow", "shadow": "s", "param": None, "rows": 10, "timed": 10,
        "latency_p50": None, "with_status": 0, "compared": 0, "disagreed": 0,
        "clean_rows": 90, "clean_latency_p50": None, "clean_compared": 0, "clean_disagreed": 0,
        "clean_with_status": 0,
    } | fields  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"fault": "delay_ms", "param": "200", "latency_p50": 230.0, "clean_latency_p50": 30.0},
         ("delay", 200.0, 230.0, 30.0, 230.0, True)),
        ({"fault": "delay_ms", "param": "200", "latency_p50": 120.0, "clean_latency_p50": 30.0},
         ("delay", 200.0, 120.0, 30.0, 230.0, False)),
        ({"fault": "delay_ms", "param": "200", "latency_p50": 120.0},
         ("delay", 200.0, 120.0, None, None, None)),
        ({"fault": "abort_status", "param": "503", "with_status": 10, "clean_with_status": 9},
         ("abort", 503.0, 1.0, 0.1, 1.0, True)),
        ({"fault": "abort_status", "param": "503", "with_status": 10, "clean_with_status": 90},
         ("abort", 503.0, 1.0, 1.0, 1.0, None)),  # the shadow always answered 503 anyway
        ({"fault": "corrupt_prediction", "compared": 8, "disagreed": 6, "clean_compared": 80,
          "clean_disagreed": 40}, ("corrupt", None, 0.75, 0.5, 1.0, True)),
        ({"fault": "corrupt_prediction", "compared": 8, "disagreed": 5, "clean_compared": 80,
          "clean_disagreed": 40}, ("corrupt", None, 0.625, 0.5, 1.0, False)),
        ({"fault": "corrupt_prediction", "clean_compared": 80}, ("corrupt", None, None, 0.0, 1.0, None)),
    ],
)  # fmt: skip
def test_checks_and_the_halfway_rule(fields: dict[str, Any], expected: tuple[Any, ...]) -> None:
    got: ChaosCheck = chaos.check(row(**fields))
    assert (got.fault, got.parameter, got.injected, got.clean, got.expected, got.noticed) == (
        expected
    )


def test_production_checks_are_named_production() -> None:
    got = chaos.check(row(side="production", shadow=None, fault="abort_status", param="503"))
    assert (got.target, got.fault) == ("production", "abort")
