"""Every estimate the report quotes is about the quantity its test tests, on data with a
known truth, checked against scipy: non-finite latencies, the latency and MAE
differences, the paired accuracy interval, duplicate rows of one request, and what the
page says was computed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sp

from shadowproxy import stats
from shadowproxy.recording.schema import PAIRS_SCHEMA
from shadowproxy.report import ReportOptions, build_report, intervals, render, summary
from shadowproxy.report.model import PairReport, Report
from tests.synthetic import DatasetSpec, RouteSpec, ShadowSpec, generate

NOW = datetime(2024, 6, 1, tzinfo=UTC)
START = datetime(2024, 5, 1, tzinfo=UTC)


def make(root: Path, **changes: Any) -> Report:
    return build_report(ReportOptions(root=str(root), **changes), now=NOW, progress=False)


def pair(report: Report, route: str, shadow: str) -> PairReport:
    return next(p for p in report.pairs if p.route == route and p.shadow == shadow)


def write_rows(root: Path, rows: list[dict[str, Any]], name: str = "rows.parquet") -> None:
    """Rows as the recorder writes them (every column, Hive layout)."""
    directory = root / "pairs" / "route=r" / "date=2024-05-01"
    directory.mkdir(parents=True, exist_ok=True)
    full = [{n: None for n in PAIRS_SCHEMA.names} | row for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=PAIRS_SCHEMA), directory / name)


def latency_row(i: int, prod: float, shadow: float) -> dict[str, Any]:
    return {
        "request_id": f"q{i}",
        "ts": START + timedelta(seconds=i),
        "shadow": "cand",
        "role": "candidate",
        "method": "POST",
        "path": "/p",
        "prod_status": 200,
        "prod_latency_ms": prod,
        "shadow_outcome": "ok",
        "shadow_status": 200,
        "shadow_latency_ms": shadow,
        "prod_prediction": '"a"',
        "shadow_prediction": '"a"',
        "agree": True,
        "comparator": "label",
    }


# --- 1. non-finite latencies ---------------------------------------------------------


def test_nan_and_infinite_latencies_are_counted_warned_about_and_left_out(tmp_path: Path) -> None:
    rows = [latency_row(i, 10.0 + i % 7, 12.0 + i % 5) for i in range(200)]
    rows += [
        latency_row(900, math.nan, 10.0),
        latency_row(901, 10.0, math.inf),
        latency_row(902, -math.inf, 10.0),
    ]
    write_rows(tmp_path, rows)
    report = make(tmp_path)
    cand = pair(report, "r", "cand")
    assert cand.nonfinite_latency == 3
    assert cand.latency.pairs == 200
    finite = rows[:200]
    diffs = [r["shadow_latency_ms"] - r["prod_latency_ms"] for r in finite]
    assert cand.latency.mean_diff == pytest.approx(sum(diffs) / len(diffs), rel=1e-12)
    prod = sorted(r["prod_latency_ms"] for r in finite)
    assert cand.latency.production.p99 == pytest.approx(float(sp.scoreatpercentile(prod, 99)))
    assert any("3 row(s) with a NaN or infinite latency" in w for w in report.warnings)
    assert summary.summary(report)["pairs"][0]["nonfinite_latency_rows"] == 3
    assert "NaN or infinite latency" in render.render(report)


@pytest.mark.parametrize(
    "call",
    [
        lambda v: stats.wilcoxon_signed_rank(v),
        lambda v: stats.median(v),
        lambda v: stats.bootstrap_median_ci(v),
    ],
    ids=["wilcoxon", "median", "bootstrap_median_ci"],
)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_pure_functions_refuse_non_finite_values(call: Any, bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        call([1.0, -2.0, bad, 3.0, 0.5])


# --- 2. estimate and test about the same quantity ------------------------------------


def test_latency_estimate_and_test_agree_where_mean_and_median_point_opposite_ways(
    tmp_path: Path,
) -> None:
    # 90% of requests are 0.5 ms faster on the shadow, 10% are 22 ms slower: the
    # median difference is -0.5 ms while the shadow is slower on average (+1.75 ms).
    rows = [latency_row(i, 20.0, 19.5 if i % 10 else 42.0 + (i % 3) * 0.1) for i in range(2000)]
    write_rows(tmp_path, rows)
    latency = pair(make(tmp_path), "r", "cand").latency
    diffs = [r["shadow_latency_ms"] - r["prod_latency_ms"] for r in rows]
    reference = sp.ttest_1samp(diffs, 0.0)
    ci = reference.confidence_interval(0.95)
    assert latency.test is not None
    assert latency.test.p_value == pytest.approx(float(reference.pvalue), rel=1e-6, abs=1e-300)
    assert latency.mean_diff is not None and latency.mean_diff > 0
    assert latency.mean_diff_ci is not None
    assert latency.mean_diff_ci.lo == pytest.approx(float(ci.low), rel=1e-9)
    assert latency.mean_diff_ci.hi == pytest.approx(float(ci.high), rel=1e-9)
    assert (latency.mean_diff_ci.lo > 0) == (latency.test.p_value < 0.05)
    verdict = pair(make(tmp_path), "r", "cand").verdict
    assert "latency mean +1.8 ms" in verdict and "paired t p<0.0001" in verdict


@settings(max_examples=200, deadline=None)
@given(
    mean=st.floats(-5, 5, allow_nan=False),
    sd=st.floats(0.01, 10),
    n=st.integers(2, 5000),
)
def test_paired_t_interval_and_test_never_disagree_about_zero(
    mean: float, sd: float, n: int
) -> None:
    result = intervals.paired_t(mean, sd * sd, n)
    lo, hi = result.ci
    assert (lo > 0 or hi < 0) == (result.test.p_value < 0.05) or math.isclose(
        result.test.p_value, 0.05, rel_tol=1e-6
    )


# --- 3. the MAE interval uses every labelled row -------------------------------------


def test_mae_interval_uses_every_labelled_row(tmp_path: Path) -> None:
    spec = DatasetSpec(
        routes=(
            RouteSpec(
                "price",
                6000,
                (ShadowSpec("v2", fixes=800, disagree=0.15),),
                task="regression",
                labeled=5000,
            ),
        ),
        stale_feedback=False,
    )
    generate(tmp_path, spec)
    report = make(tmp_path, sample_size=1000)
    labels = pair(report, "price", "v2").labels
    assert labels is not None and labels.n == 5000
    # Brute force: the paired differences of absolute errors over all 5,000 rows.
    table = pq.read_table(tmp_path / "pairs").to_pylist()
    feedback = {
        r["request_id"]: float(r["label"]) for r in pq.read_table(tmp_path / "feedback").to_pylist()
    }
    diffs = [
        abs(float(r["shadow_prediction"]) - feedback[r["request_id"]])
        - abs(float(r["prod_prediction"]) - feedback[r["request_id"]])
        for r in table
        if r["request_id"] in feedback and r["shadow_prediction"] is not None
    ]
    assert len(diffs) == 5000
    ci = sp.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert labels.difference_ci is not None
    assert labels.difference_ci.lo == pytest.approx(float(ci.low), rel=1e-9)
    assert labels.difference_ci.hi == pytest.approx(float(ci.high), rel=1e-9)
    assert labels.difference_ci.lo <= labels.difference <= labels.difference_ci.hi


# --- 4. the paired accuracy interval agrees with the exact McNemar test -------------


@pytest.mark.parametrize(("x", "n"), [(0, 5), (5, 5), (3, 10), (40, 50), (1, 1000), (700, 1000)])
def test_clopper_pearson_matches_scipy(x: int, n: int) -> None:
    ref = sp.binomtest(x, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = intervals.clopper_pearson(x, n)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def test_accuracy_interval_at_the_boundary_agrees_with_exact_mcnemar() -> None:
    # b=0, c=5 of 40: exact p = 0.0625, so the interval must include 0.
    lo, hi = intervals.paired_accuracy_ci(0, 5, 40)
    assert stats.mcnemar_exact(0, 5).p_value == pytest.approx(0.0625)
    assert lo < 0 < hi


@pytest.mark.parametrize(("b", "c", "n"), [(0, 0, 40), (0, 0, 1), (0, 1, 1), (3, 3, 10)])
def test_accuracy_interval_keeps_a_width(b: int, c: int, n: int) -> None:
    lo, hi = intervals.paired_accuracy_ci(b, c, n)
    assert hi - lo > 0.01
    assert lo <= (c - b) / n <= hi


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.data())
def test_accuracy_interval_excludes_zero_exactly_when_mcnemar_rejects(
    bn: tuple[int, int], data: st.DataObject
) -> None:
    b, n = bn
    c = data.draw(st.integers(0, n - b))
    lo, hi = intervals.paired_accuracy_ci(b, c, n)
    p = float(sp.binomtest(min(b, c), b + c).pvalue) if b + c else 1.0
    assert (lo > 0 or hi < 0) == (p < 0.05)
    assert lo <= (c - b) / n <= hi


# --- 5. a request counts once --------------------------------------------------------


def test_retried_requests_count_once_for_labels(tmp_path: Path) -> None:
    spec = DatasetSpec(
        routes=(
            RouteSpec(
                "churn", 200, (ShadowSpec("cand", fixes=12, breaks=1, disagree=0.1),), labeled=60
            ),
        ),
        stale_feedback=False,
    )
    generate(tmp_path, spec)
    files = [f for f in (tmp_path / "pairs").rglob("*.parquet") if not f.name.startswith(".")]
    table = pa.concat_tables(pq.read_table(f, schema=PAIRS_SCHEMA) for f in files)
    for f in files:
        f.unlink()
    later = table.set_column(
        table.schema.get_field_index("ts"),
        "ts",
        pc.add(table["ts"], pa.scalar(timedelta(seconds=1))),
    )
    directory = tmp_path / "pairs" / "route=churn" / "date=2024-05-01"
    directory.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate((table, later, later)):
        pq.write_table(part, directory / f"part-{i}.parquet")
    labels = pair(make(tmp_path), "churn", "cand").labels
    assert labels is not None
    assert labels.n == 60
    assert labels.duplicates == 120
    assert labels.test.p_value == pytest.approx(float(sp.binomtest(1, 13).pvalue), rel=1e-9)
    report = make(tmp_path)
    assert any("120 duplicate row(s)" in w for w in report.warnings)
    assert "120 duplicate rows folded" in pair(report, "churn", "cand").verdict
    assert summary.summary(report)["pairs"][0]["labels"]["duplicate_rows_folded"] == 120


# --- 6. say what was computed --------------------------------------------------------


def test_the_page_names_each_variant_and_claims_no_t_digest(tmp_path: Path) -> None:
    generate(
        tmp_path, DatasetSpec(routes=(RouteSpec("churn", 300, (ShadowSpec("c"),), labeled=100),))
    )
    page = render.render(make(tmp_path))
    assert "t-digest" not in page
    for variant in (
        "without continuity correction",
        "continuity correction of 1/2",
        "type 7",
        "Clopper-Pearson",
        "paired t test",
    ):
        assert variant in page, variant


def test_the_noise_floor_is_printed_alike_in_verdict_and_section(tmp_path: Path) -> None:
    generate(
        tmp_path,
        DatasetSpec(
            routes=(
                RouteSpec(
                    "churn",
                    3000,
                    (
                        ShadowSpec("c", disagree=0.05),
                        ShadowSpec("b", role="baseline", disagree=0.0123),
                    ),
                ),
            )
        ),
    )
    report = make(tmp_path)
    cand = pair(report, "churn", "c")
    assert cand.noise_floor is not None
    quoted = f"noise floor {100 * cand.noise_floor.rate:.1f}%"
    assert quoted in cand.verdict
    section = render.render(report).split('id="pair-churn-c"')[1]
    assert f"<td>{100 * cand.noise_floor.rate:.1f}%</td>" in section
