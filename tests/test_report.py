"""The report over synthetic recordings whose answers are known by construction."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from scipy import stats as sp

from shadowproxy import stats
from shadowproxy.compare import jsonpath
from shadowproxy.report import (
    Filters,
    ReportOptions,
    analysis,
    build_report,
    groundtruth,
    load,
    render,
    summary,
    verdict,
)
from shadowproxy.report.model import Interval, Latency, PairReport, Percentiles, Report
from tests import synthetic
from tests.synthetic import DatasetSpec, RouteSpec, ShadowSpec

NOW = datetime(2024, 6, 1, tzinfo=UTC)
COUNTRY = "$.instances[0].country"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, synthetic.Truth]]:
    root = tmp_path_factory.mktemp("rec") / "shadow-logs"
    truth = synthetic.generate(root, synthetic.example_spec())
    yield root, truth


def make(root: Path, **changes: Any) -> Report:
    options = ReportOptions(root=str(root), **changes)
    return build_report(options, now=NOW, progress=False)


@pytest.fixture(scope="module")
def report(recording: tuple[Path, synthetic.Truth]) -> Report:
    root, _truth = recording
    return make(root, segments=(jsonpath.parse(COUNTRY),), sample_size=100_000)


def pair(report: Report, route: str, shadow: str) -> PairReport:
    return next(p for p in report.pairs if (p.route, p.shadow) == (route, shadow))


def read_pairs(root: Path) -> pa.Table:
    files = [str(p) for p in sorted(root.glob("pairs/*/*/*.parquet")) if not p.name.startswith(".")]
    return ds.dataset(files, format="parquet", partitioning="hive").to_table()


# --- volume and agreement ------------------------------------------------------------


def test_every_pair_reconciles_with_the_truth(
    report: Report, recording: tuple[Path, synthetic.Truth]
) -> None:
    _root, truth = recording
    assert {(p.route, p.shadow) for p in report.pairs} == set(truth.pairs)
    for (route, shadow), expected in truth.pairs.items():
        got = pair(report, route, shadow)
        assert got.rows == expected.rows
        assert got.compared == expected.compared
        assert got.agreed == expected.agreed
        assert got.outcomes == {k: expected.outcomes[k] for k in got.outcomes}


def test_a_shadow_disagreeing_on_10_percent_has_agreement_exactly_0_9(report: Report) -> None:
    candidate = pair(report, "churn", "candidate")
    assert candidate.agreement_rate == 0.9
    assert candidate.agreement_ci is not None
    assert candidate.agreement_ci.lo < 0.9 < candidate.agreement_ci.hi
    assert candidate.comparator == "label"
    assert candidate.role == "candidate"


def test_failed_copies_are_counted_and_not_compared(report: Report) -> None:
    price = pair(report, "house-price", "price-v3")
    assert price.outcomes == {"ok": 1960, "error": 20, "timeout": 10, "dropped": 6, "skipped": 4}
    assert price.compared == 1960
    assert price.shadow_5xx_rate == pytest.approx(20 / 1980)
    assert price.prod_5xx_rate == 0.0
    assert price.status_mismatch == 20


def test_agreement_over_time_adds_up(report: Report) -> None:
    candidate = pair(report, "churn", "candidate")
    assert report.bucket_seconds == 3600
    assert len(candidate.timeline) == 48
    assert sum(t.compared for t in candidate.timeline) == candidate.compared
    assert sum(t.agreed for t in candidate.timeline) == candidate.agreed


# --- noise floor ---------------------------------------------------------------------


def test_candidate_is_compared_with_the_baseline_noise_floor(report: Report) -> None:
    floor = pair(report, "churn", "candidate").noise_floor
    assert floor is not None
    assert floor.baselines == ("baseline",)
    assert floor.rate == pytest.approx(0.01)
    pooled = (200 + 20) / 4000
    z = (0.1 - 0.01) / math.sqrt(pooled * (1 - pooled) * (2 / 2000))
    assert floor.test is not None
    assert floor.test.p_value == pytest.approx(sp.norm.sf(z), rel=1e-9)
    assert pair(report, "churn", "baseline").noise_floor is None
    assert pair(report, "house-price", "price-v3").noise_floor is None


# --- ground truth --------------------------------------------------------------------


def test_accuracy_difference_is_exactly_three_points(report: Report) -> None:
    labels = pair(report, "churn", "candidate").labels
    assert labels is not None
    assert labels.task == "classification"
    assert labels.n == 1000
    # The stale (older, wrong) feedback rows would lower production's accuracy: the
    # newest label per request must win.
    assert labels.production["accuracy"] == 0.8
    assert labels.shadow["accuracy"] == 0.83
    assert labels.difference == pytest.approx(0.03, abs=1e-15)
    assert labels.test.p_value == pytest.approx(sp.binomtest(10, 50).pvalue, rel=1e-9)
    assert labels.test.p_value < 0.05


def test_baseline_has_identical_accuracy(report: Report) -> None:
    labels = pair(report, "churn", "baseline").labels
    assert labels is not None
    assert labels.difference == 0.0
    assert labels.test.p_value == 1.0


def test_regression_errors_match_a_brute_force_computation(
    report: Report, recording: tuple[Path, synthetic.Truth]
) -> None:
    root, _truth = recording
    labels = pair(report, "house-price", "price-v3").labels
    assert labels is not None and labels.task == "regression"
    truth = _latest_labels(root)
    rows = read_pairs(root).filter(pa.compute.equal(pa.compute.field("shadow"), "price-v3"))
    prod_err, shadow_err = [], []
    for row in rows.to_pylist():
        if row["request_id"] in truth and row["shadow_prediction"] is not None:
            y = truth[row["request_id"]]
            prod_err.append(abs(json.loads(row["prod_prediction"]) - y))
            shadow_err.append(abs(json.loads(row["shadow_prediction"]) - y))
    n = len(prod_err)
    assert labels.n == n == 500
    assert labels.production["mae"] == pytest.approx(sum(prod_err) / n, rel=1e-12)
    assert labels.shadow["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in shadow_err) / n))
    diffs = [s - p for p, s in zip(prod_err, shadow_err, strict=True)]
    expected = sp.ttest_1samp(diffs, 0.0)
    assert labels.test.name == "paired t"
    assert labels.test.p_value == pytest.approx(float(expected.pvalue), rel=1e-6, abs=1e-300)
    # The MAE difference is the mean error difference, over every labelled row, with the
    # t interval the test inverts.
    assert labels.difference == pytest.approx(sum(diffs) / n, rel=1e-12)
    ci = expected.confidence_interval(0.95)
    assert labels.difference_ci is not None
    assert labels.difference_ci.lo == pytest.approx(float(ci.low), rel=1e-9)
    assert labels.difference_ci.hi == pytest.approx(float(ci.high), rel=1e-9)
    assert labels.difference < 0  # the shadow fixes 100 requests
    assert labels.difference_ci.hi < 0


def _latest_labels(root: Path) -> dict[str, float]:
    table = ds.dataset(str(root / "feedback"), format="parquet", partitioning="hive").to_table()
    latest: dict[str, tuple[datetime, float]] = {}
    for row in table.to_pylist():
        value = json.loads(row["label"])
        if isinstance(value, float) and (
            row["request_id"] not in latest or row["ts"] > latest[row["request_id"]][0]
        ):
            latest[row["request_id"]] = (row["ts"], value)
    return {k: v for k, (_ts, v) in latest.items()}


@pytest.mark.parametrize("prediction_format", ["list", "scores"])
def test_list_and_score_vector_predictions_give_the_same_accuracy(
    tmp_path: Path, prediction_format: str
) -> None:
    route = RouteSpec(
        "churn",
        600,
        (ShadowSpec("candidate", disagree=0.1, fixes=30, breaks=6),),
        prediction_format=prediction_format,  # type: ignore[arg-type]
        labeled=300,
    )
    synthetic.generate(tmp_path / "rec", DatasetSpec(routes=(route,)))
    labels = pair(make(tmp_path / "rec"), "churn", "candidate").labels
    assert labels is not None and labels.task == "classification"
    assert labels.production["accuracy"] == 0.8
    assert labels.difference == pytest.approx(24 / 300, abs=1e-15)


def test_a_labels_file_works_like_feedback(tmp_path: Path) -> None:
    truth = synthetic.generate(tmp_path / "rec", synthetic.example_spec(labels_in="file"))
    assert truth.labels_file is not None
    assert not (tmp_path / "rec" / "feedback").exists()
    report = make(tmp_path / "rec", labels=str(truth.labels_file))
    labels = pair(report, "churn", "candidate").labels
    assert labels is not None
    assert labels.difference == pytest.approx(0.03, abs=1e-15)
    assert pair(report, "house-price", "price-v3").labels is not None


def test_the_labels_file_overrides_feedback(
    tmp_path: Path, recording: tuple[Path, synthetic.Truth]
) -> None:
    root, _truth = recording
    ids = [f"churn-{i:08d}" for i in range(2000)]
    pq.write_table(
        pa.table({"request_id": ids, "label": ['"fish"'] * 2000}), tmp_path / "l.parquet"
    )
    labels = pair(make(root, labels=str(tmp_path / "l.parquet")), "churn", "candidate").labels
    assert labels is not None
    assert labels.n == 2000
    assert labels.production["accuracy"] < 0.5


def test_without_labels_there_is_no_ground_truth_section(tmp_path: Path) -> None:
    synthetic.generate(tmp_path / "rec", synthetic.example_spec(requests=300, labels_in="none"))
    report = make(tmp_path / "rec")
    assert not report.labels_available
    assert all(p.labels is None for p in report.pairs)


# --- latency -------------------------------------------------------------------------


def test_latency_percentiles_and_paired_test(
    report: Report, recording: tuple[Path, synthetic.Truth]
) -> None:
    root, _truth = recording
    rows = read_pairs(root).filter(pa.compute.equal(pa.compute.field("shadow"), "candidate"))
    both = [(r["prod_latency_ms"], r["shadow_latency_ms"]) for r in rows.to_pylist()]
    latency = pair(report, "churn", "candidate").latency
    assert latency.pairs == latency.sample == len(both) == 2000
    prod_sorted = sorted(p for p, _s in both)
    assert latency.production.p50 == pytest.approx(prod_sorted[1000], rel=0.02)
    assert latency.production.p99 == pytest.approx(prod_sorted[1980], rel=0.02)
    diffs = [s - p for p, s in both]
    expected = sp.ttest_1samp(diffs, 0.0)
    assert latency.test is not None and latency.test.name == "paired t"
    assert latency.test.statistic == pytest.approx(float(expected.statistic), rel=1e-6)
    ci = expected.confidence_interval(0.95)
    assert latency.mean_diff == pytest.approx(sum(diffs) / len(diffs), rel=1e-9)
    assert latency.mean_diff_ci is not None
    assert latency.mean_diff_ci.lo == pytest.approx(float(ci.low), rel=1e-6)
    assert latency.mean_diff_ci.hi == pytest.approx(float(ci.high), rel=1e-6)
    assert 6.0 < latency.mean_diff < 8.0  # the shadow is 5 ms slower plus 2.5 ms by design
    assert sum(b.count for b in latency.production_hist) == 2000
    assert len(latency.production_hist) == len(latency.shadow_hist)


def test_latency_sample_is_capped_and_deterministic(
    recording: tuple[Path, synthetic.Truth],
) -> None:
    root, _truth = recording
    first = pair(make(root, sample_size=500), "churn", "candidate").latency
    second = pair(make(root, sample_size=500), "churn", "candidate").latency
    assert first.sample == 500
    assert first == second


# --- charts' data, examples, segments ------------------------------------------------


def test_confusion_matrix_for_label_comparators(report: Report) -> None:
    confusion = pair(report, "churn", "candidate").confusion
    assert confusion is not None
    assert set(confusion.classes) == set(synthetic.CLASSES)
    assert sum(confusion.cells.values()) == 2000
    off_diagonal = sum(n for (p, s), n in confusion.cells.items() if p != s)
    assert off_diagonal == 200
    assert pair(report, "house-price", "price-v3").confusion is None


def test_diff_histogram_for_numeric_comparators(report: Report) -> None:
    bins = pair(report, "house-price", "price-v3").diff_histogram
    assert sum(b.count for b in bins) == 1960
    assert math.isinf(bins[-1].hi)
    assert pair(report, "churn", "candidate").diff_histogram == []


def test_examples_are_the_top_disagreements_with_bodies(report: Report) -> None:
    price = pair(report, "house-price", "price-v3")
    assert len(price.examples) == 5
    scores = [e.diff_score or 0.0 for e in price.examples]
    assert scores == sorted(scores, reverse=True)
    for example in price.examples:
        assert example.prod_prediction != example.shadow_prediction
        assert '"instances"' in example.request_body
        assert example.prod_body and example.shadow_body


def test_segments_flag_the_worse_country(report: Report) -> None:
    segments = pair(report, "house-price", "price-v3").segments
    assert {s.value for s in segments} == set(synthetic.COUNTRIES)
    assert sum(s.rows for s in segments) == 2000
    flagged = {s.value for s in segments if s.worse}
    assert flagged == {"FR"}
    candidate_segments = pair(report, "churn", "candidate").segments
    assert not any(s.worse for s in candidate_segments)


def test_wildcard_segment_path_equals_the_scalar_one(
    recording: tuple[Path, synthetic.Truth],
) -> None:
    root, _truth = recording
    scalar = make(root, segments=(jsonpath.parse(COUNTRY),))
    wildcard = make(root, segments=(jsonpath.parse("$.instances[*].country"),))
    for a, b in zip(scalar.pairs, wildcard.pairs, strict=True):
        assert [(s.value, s.rows, s.agreed) for s in a.segments] == [
            (s.value, s.rows, s.agreed) for s in b.segments
        ]


def test_segments_beyond_the_cap_are_grouped(recording: tuple[Path, synthetic.Truth]) -> None:
    root, _truth = recording
    report = make(root, segments=(jsonpath.parse("$.instances[0].x"),), top_segments=5)
    segments = pair(report, "churn", "candidate").segments
    assert len(segments) == 6
    assert segments[-1].value == "(other)"
    assert sum(s.rows for s in segments) == 2000


def test_missing_segment_values_are_their_own_segment(
    recording: tuple[Path, synthetic.Truth],
) -> None:
    root, _truth = recording
    report = make(root, segments=(jsonpath.parse("$.nothing.here"),))
    assert [s.value for s in pair(report, "churn", "candidate").segments] == ["(missing)"]


# --- filters and discovery -----------------------------------------------------------


def test_route_and_shadow_filters(recording: tuple[Path, synthetic.Truth]) -> None:
    root, _truth = recording
    report = make(root, filters=Filters(routes=("churn",), shadows=("candidate",)))
    assert [(p.route, p.shadow) for p in report.pairs] == [("churn", "candidate")]
    assert report.pairs[0].noise_floor is None  # its baseline was filtered out


def test_time_filters(recording: tuple[Path, synthetic.Truth]) -> None:
    root, _truth = recording
    since = datetime(2024, 5, 1, 12, tzinfo=UTC)
    until = datetime(2024, 5, 2, tzinfo=UTC)
    report = make(root, filters=Filters(routes=("churn",), since=since, until=until))
    table = read_pairs(root).to_pylist()
    expected = sum(
        1
        for r in table
        if r["route"] == "churn" and r["shadow"] == "candidate" and since <= r["ts"] < until
    )
    assert pair(report, "churn", "candidate").rows == expected == 500


def test_temporary_files_are_ignored(recording: tuple[Path, synthetic.Truth]) -> None:
    root, _truth = recording
    assert list(root.glob("pairs/*/*/.*"))  # the generator left some behind
    dataset = load.discover(str(root))
    assert all("/." not in f for f in dataset.pair_files)
    assert len(dataset.feedback_files) == 3


def test_the_arrow_dataset_path_gives_the_same_report(
    recording: tuple[Path, synthetic.Truth], monkeypatch: pytest.MonkeyPatch, report: Report
) -> None:
    """Roots on object stores go through a pyarrow dataset; run that path on local files."""
    root, _truth = recording
    real = load.discover
    monkeypatch.setattr(load, "discover", lambda r: replace(real(r), local=False))
    remote = make(root, segments=(jsonpath.parse(COUNTRY),), sample_size=100_000)
    ours, theirs = summary.summary(report), summary.summary(remote)
    assert ours.pop("generated_at") == theirs.pop("generated_at")
    for a, b in zip(ours["pairs"], theirs["pairs"], strict=True):
        # t-digest percentiles depend a little on the order rows arrive in.
        for key in ("prod_latency_ms", "shadow_latency_ms"):
            assert _approx_equal(a.pop(key), b.pop(key), rel=0.01)
    assert _approx_equal(theirs, ours)


def _approx_equal(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal up to float summation order (the two scans add in different orders)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_approx_equal(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_approx_equal(x, y, rel) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# --- verdicts and outputs ------------------------------------------------------------


def test_verdicts_state_the_evidence(report: Report) -> None:
    candidate = pair(report, "churn", "candidate").verdict
    assert candidate.startswith("candidate: disagrees on 10.0% [")
    assert "noise floor 1.0%" in candidate
    assert "accuracy +3.0 pts [1.4, 4.4], McNemar p<0.0001" in candidate
    assert "on 1,000 labels" in candidate
    baseline = pair(report, "churn", "baseline").verdict
    assert "noise floor" in baseline and "not significant" in baseline
    price = pair(report, "house-price", "price-v3").verdict
    assert "1.5% of copies failed (error/timeout)" in price and "MAE -" in price


def test_too_few_labels_is_said_so(tmp_path: Path) -> None:
    route = RouteSpec("churn", 200, (ShadowSpec("candidate", disagree=0.1, fixes=3),), labeled=20)
    synthetic.generate(tmp_path / "rec", DatasetSpec(routes=(route,)))
    verdict = make(tmp_path / "rec").pairs[0].verdict
    assert "too few labels (20) to compare accuracy" in verdict
    assert "McNemar" not in verdict


SUMMARY_KEYS = {"generated_at", "root", "filters", "pairs"}
PAIR_KEYS = {
    "route",
    "shadow",
    "role",
    "rows",
    "outcomes",
    "compared",
    "agreement_rate",
    "agreement_ci95",
    "prod_latency_ms",
    "shadow_latency_ms",
    "latency_test",
    "labels",
    "segments",
    "verdict",
}


def test_summary_json_has_the_contract_keys(report: Report) -> None:
    data = json.loads(summary.dumps(report))
    assert data.keys() >= SUMMARY_KEYS
    for item in data["pairs"]:
        assert item.keys() >= PAIR_KEYS
        assert set(item["outcomes"]) == {"ok", "error", "timeout", "dropped", "skipped"}
        assert set(item["prod_latency_ms"]) == {"p50", "p95", "p99"}
        assert set(item["shadow_latency_ms"]) == {"p50", "p95", "p99"}
        assert {"name", "p_value"} <= item["latency_test"].keys()
        labels = item["labels"]
        assert labels is None or {"n", "task", "production", "shadow", "test"} <= labels.keys()
        if labels is not None:
            assert labels["task"] in {"classification", "regression"}
            assert {"name", "statistic", "p_value"} <= labels["test"].keys()
    candidate = next(p for p in data["pairs"] if p["shadow"] == "candidate")
    assert candidate["agreement_rate"] == 0.9
    assert candidate["labels"]["production"]["accuracy"] == 0.8


def test_html_is_self_contained_and_escapes_bodies(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    synthetic.generate(root, synthetic.example_spec(requests=300))
    hostile = "<script>alert('x')</script>"
    _append_row(root, request_body=json.dumps({"instances": [{"country": hostile}]}).encode())
    report = make(root, segments=(jsonpath.parse(COUNTRY),))
    page = render.render(report)
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert page.count("<svg") >= 4 * len(report.pairs)


def _append_row(root: Path, **fields: Any) -> None:
    """One more disagreeing pair, written as the recorder would."""
    row = (
        {name: None for name in synthetic.PAIRS_SCHEMA.names}
        | {
            "request_id": "hostile-1",
            "ts": datetime(2024, 5, 1, 1, tzinfo=UTC),
            "shadow": "candidate",
            "role": "candidate",
            "method": "POST",
            "path": "/<b>x</b>",
            "prod_status": 200,
            "prod_latency_ms": 10.0,
            "shadow_outcome": "ok",
            "shadow_status": 200,
            "shadow_latency_ms": 11.0,
            "prod_body": b"<img src=x onerror=alert(1)>",
            "shadow_body": b"\xff\xfe not utf-8",
            "prod_prediction": '"<i>cat</i>"',
            "shadow_prediction": '"dog"',
            "agree": False,
            "comparator": "label",
            "diff_score": 9.0,
            "compare_detail": "<detail>",
        }
        | fields
    )
    directory = root / "pairs" / "route=churn" / "date=2024-05-01"
    pq.write_table(
        pa.Table.from_pylist([row], schema=synthetic.PAIRS_SCHEMA), directory / "x.parquet"
    )


def test_analysis_builders_handle_empty_inputs() -> None:
    assert analysis.segment_tests("$.a", []) == []
    assert analysis.latency_bins([]) == {}
    assert analysis.class_order({("b", "a"): 2, ("(other)", "b"): 5}) == ("a", "b", "(other)")
    assert analysis.class_order({("10", "9"): 1, ("(none)", "2"): 5}) == ("2", "9", "10", "(none)")
    assert analysis.choose_bucket(NOW, NOW) == 1
    assert analysis.choose_bucket(NOW, NOW + timedelta(minutes=2)) == 5


# --- verdict wording (pure) ----------------------------------------------------------


def _bare_pair(**changes: Any) -> PairReport:
    base = PairReport(
        route="r",
        shadow="cand",
        role="candidate",
        rows=1000,
        outcomes={"ok": 1000, "error": 0, "timeout": 0, "dropped": 0, "skipped": 0},
        compared=1000,
        agreed=950,
        agreement_rate=0.95,
        agreement_ci=Interval(0.935, 0.962),
        comparator="label",
        prod_5xx_rate=0.0,
        shadow_5xx_rate=0.0,
        status_mismatch=0,
        latency=Latency(Percentiles(10, 20, 30), Percentiles(11, 21, 44), 0, 0, None, None, None),
    )
    return replace(base, **changes)


def test_verdict_says_not_significant_and_how_many_labels_are_missing() -> None:
    labels = groundtruth.classification_result(
        {"n": 400, "b": 6, "c": 10, "prod_right": 300, "shadow_right": 304}
    )
    assert labels.test.p_value > 0.05
    assert labels.more_labels_needed is not None and labels.more_labels_needed > 0
    text = verdict.verdict(_bare_pair(labels=labels))
    assert "accuracy +1.0 pts [" in text
    assert "not significant (McNemar p=0.45 on 400 labels; ~" in text
    assert "more labels to detect 1.0 pts)" in text
    assert "latency: too few answered requests to compare" in text


def test_verdict_without_comparable_answers() -> None:
    text = verdict.verdict(
        _bare_pair(
            compared=0,
            agreed=0,
            agreement_rate=None,
            agreement_ci=None,
            outcomes={"ok": 0, "error": 0, "timeout": 900, "dropped": 100, "skipped": 0},
        )
    )
    assert text == (
        "cand: 90.0% of copies failed (error/timeout), 10.0% not sent (dropped/skipped); "
        "no comparable answers; latency: too few answered requests to compare"
    )


def test_latency_clause_only_claims_what_the_test_supports() -> None:
    flat = Latency(
        Percentiles(10, 20, 30),
        Percentiles(10, 20, 31),
        500,
        500,
        stats.TestResult("paired t", 1.0, 0.4),
        0.1,
        Interval(-0.2, 0.3),
    )
    text = verdict.verdict(_bare_pair(latency=flat))
    assert (
        "latency mean +0.1 ms [-0.2, +0.3], no significant difference "
        "(paired t p=0.40 on 500 requests); p99 +1 ms"
    ) in text
    assert "median" not in text
