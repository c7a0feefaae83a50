"""The page a decision-maker reads: the decision first, candidates before baselines,
numbered sections without gaps, no bare "-", a method note that covers the decision,
confusion matrices and time axes that suit the data, a terminal table of 100 columns."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shadowproxy.report import ReportOptions, build_report, render, svg, table
from shadowproxy.report.model import Report
from tests import synthetic
from tests.synthetic import DatasetSpec, RouteSpec, ShadowSpec
from tests.test_report_experiments import record

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def make(root: Path, **changes: object) -> Report:
    options = ReportOptions(root=str(root), **changes)  # type: ignore[arg-type]
    return build_report(options, now=NOW, progress=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    root = tmp_path_factory.mktemp("page") / "rec"
    synthetic.generate(root, synthetic.example_spec(requests=600))
    return make(root)


def test_decision_cards_come_first_candidates_before_baselines(report: Report) -> None:
    page = render.render(report)
    assert page.index('id="decisions"') < page.index("<h2>Verdicts</h2>")
    cards = re.findall(r'<div class="card (PROMOTE|HOLD|REJECT)"><h3>.*?</span> ([\w.-]+) ', page)
    assert [name for _status, name in cards] == ["candidate", "price-v3"]
    sections = re.findall(r'<section class="pair" id="pair-([\w.-]+)"', page)
    assert sections.index("churn-baseline") == len(sections) - 1
    assert "criterion</th><th>estimate</th><th>one-sided 95% bounds</th>" in page


def test_section_numbers_have_no_gaps(report: Report) -> None:
    page = render.render(report)
    for section in page.split('<section class="pair"')[1:]:
        numbers = [int(n) for n in re.findall(r"<h4>(\d+)\. ", section)]
        assert numbers == list(range(1, len(numbers) + 1)), numbers
    # house-price has no baseline: its sections run on without a noise floor.
    price = page.split('id="pair-house-price-price-v3"')[1].split("</section>")[0]
    assert "Noise floor" not in price and "<h4>3. Latency</h4>" in price


def test_no_bare_dash_for_an_undefined_figure(report: Report) -> None:
    page = render.render(report)
    assert re.search(r"<td>\s*-\s*</td>", page) is None
    out = io.StringIO()
    table.print_summary(report, out)
    rows = [line for line in out.getvalue().splitlines() if line.startswith(" ")]
    assert rows and all(re.search(r"\s-\s", line) is None for line in rows)


def test_how_to_read_covers_the_decision_srm_power_and_non_inferiority(report: Report) -> None:
    methods = render.render(report).split("How to read this report")[1]
    for words in ("non-inferiority", "PROMOTE", "HOLD", "REJECT", "Sample-ratio", "Power"):
        assert words in methods, words


def test_terminal_table_fits_100_columns(report: Report) -> None:
    out = io.StringIO()
    table.print_summary(report, out)
    text = out.getvalue()
    rows = [line for line in text.splitlines() if line.startswith(" ")]  # the table's
    table_part = "\n".join(rows)
    assert len(rows) >= 5 and max(len(line) for line in rows) <= 100
    assert "route / shadow" in table_part and "decision" in table_part
    # The one-line decisions come last, one per candidate.
    decisions = [line for line in text.splitlines() if line.startswith("decision ")]
    assert len(decisions) == 2 and text.rstrip().endswith(decisions[-1])


def test_an_ab_only_report_has_no_empty_verdicts_table(tmp_path: Path) -> None:
    record(tmp_path, "rank", [("control", 0.5, [True, False] * 60), ("b", 0.5, [True] * 120)])
    report = make(tmp_path)
    page = render.render(report)
    assert "Verdicts" not in page and 'id="decisions"' not in page
    assert "<h1>A/B test report</h1>" in page
    assert render.title(report) == "A/B test report"


def test_confusion_matrix_keeps_every_class_up_to_the_limit_in_a_stable_order(
    tmp_path: Path,
) -> None:
    spec = DatasetSpec(
        routes=(RouteSpec("churn", 400, (ShadowSpec("c", disagree=0.2),)),), stale_feedback=False
    )
    synthetic.generate(tmp_path / "rec", spec)
    confusion = next(p for p in make(tmp_path / "rec").pairs).confusion
    assert confusion is not None
    assert confusion.classes == tuple(sorted(synthetic.CLASSES))
    limited = next(p for p in make(tmp_path / "rec", top_classes=2).pairs).confusion
    assert limited is not None and limited.classes[-1] == "(other)" and len(limited.classes) == 3


def test_empty_confusion_cells_are_unshaded() -> None:
    chart = svg.heatmap("c", ("a", "b"), {("a", "a"): 5, ("b", "b"): 3})
    assert chart.count('fill="none"') == 2
    assert chart.count("fill-opacity") == 2


def test_time_axis_suits_a_short_run() -> None:
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    points = [(start + timedelta(seconds=5 * i), 0.9, 0.85, 0.95) for i in range(24)]
    chart = svg.rate_over_time("t", points)
    labels = re.findall(r">(\d\d:\d\d:\d\d)(?: UTC)?</text>", chart)
    assert labels == ["12:00:00", "12:00:57", "12:01:55"]
