"""The report's experiment section, on exposures and feedback written as the recorder
writes them (real schema, real Parquet files) and read by the real report (DuckDB).

Outcomes are simulated with a seeded generator, so the true effect is known: the
interval the report gives must contain it, and the split check must pass on the
configured split and fail on a skewed one.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder
from shadowproxy.recording.storage import (
    Encoder,
    Storage,
    exposures_directory,
    feedback_directory,
    read_exposures,
)
from shadowproxy.report import (
    Filters,
    ReportOptions,
    build_report,
    experiments,
    render,
    stats,
    summary,
    table,
)
from shadowproxy.report.model import Experiment, Report
from shadowproxy.schema import (
    EXPOSURES_SCHEMA,
    FEEDBACK_SCHEMA,
    to_record_batch,
    ts_micros,
)
from tests.support import route, upstream, write_config

NOW = datetime(2024, 6, 1, tzinfo=UTC)
START = datetime(2024, 5, 1, 6, tzinfo=UTC).timestamp()

Outcome = bool | int | float | None
"""One request's outcome; None: no feedback for it."""


def write(root: Path, directory: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    encoder = Encoder(schema)
    encoder.write(pa.Table.from_batches([to_record_batch(rows, schema)]))
    Storage(str(root)).write(directory, encoder.finish())


def record(
    root: Path,
    route_name: str,
    arms: Sequence[tuple[str, float | None, Sequence[Outcome]]],
    *,
    chaos: int = 0,
) -> None:
    """Exposures of ``route_name`` (one per outcome, arms interleaved in time) and their
    feedback; ``chaos`` extra rows per arm carry an injected fault and outcome 100."""
    exposures, feedback = [], []
    for arm, share, outcomes in arms:
        for n, outcome in enumerate([*outcomes, *([100] * chaos)]):
            request_id = f"{route_name}-{arm}-{n:05d}"
            ts = START + n
            exposures.append(
                {
                    "ts": ts_micros(ts),
                    "request_id": request_id,
                    "arm": arm,
                    "unit": f"u-{arm}-{n}",
                    "status": 200,
                    "latency_ms": 10.0,
                    "error": None,
                    "chaos": "delay_ms=5" if n >= len(outcomes) else None,
                    "share": share,
                }
            )
            if outcome is not None:
                # An older label first: the newest feedback of a request is the one used.
                feedback.append({"request_id": request_id, "label": '"stale"', "ts": ts_micros(ts)})
                label = json.dumps(outcome)
                feedback.append({"request_id": request_id, "label": label, "ts": ts_micros(ts + 1)})
    write(root, exposures_directory(route_name, "2024-05-01"), exposures, EXPOSURES_SCHEMA)
    if feedback:
        write(root, feedback_directory("2024-05-01"), feedback, FEEDBACK_SCHEMA)


def make(root: Path, **options: Any) -> Report:
    return build_report(ReportOptions(root=str(root), **options), now=NOW, progress=False)


def only(report: Report) -> Experiment:
    (trial,) = report.experiments
    return trial


def bernoulli(rng: random.Random, p: float, n: int) -> list[Outcome]:
    return [rng.random() < p for _ in range(n)]


def users_split(rng: random.Random, users: int, treatment_share: float) -> tuple[int, int]:
    treated = sum(rng.random() < treatment_share for _ in range(users))
    return users - treated, treated


# --- binary: a known effect ----------------------------------------------------------


def test_ab_with_a_known_effect_contains_it_and_the_split_passes(tmp_path: Path) -> None:
    rng = random.Random(7)
    n_control, n_treatment = users_split(rng, 4000, 0.5)
    control = bernoulli(rng, 0.10, n_control)
    treatment = bernoulli(rng, 0.13, n_treatment)
    # Production answers outside the experiment's share; it is no arm of the comparison.
    record(
        tmp_path,
        "rank",
        [
            ("control", 0.5, control),
            ("treatment", 0.5, treatment),
            ("production", 0.0, [None] * 50),
        ],
    )
    trial = only(make(tmp_path))
    assert (trial.design, trial.kind, trial.control) == ("ab", "binary", "control")
    assert [a.name for a in trial.arms] == ["control", "treatment"]
    assert trial.difference_ci is not None and trial.test is not None
    assert trial.difference_ci.lo < 0.03 < trial.difference_ci.hi
    assert trial.test.p_value < 0.05
    assert trial.srm.mismatch is False and trial.srm.test is not None
    assert trial.warnings == ()
    # The figures are stats.py's on the same counts.
    x_c, x_t = sum(map(bool, control)), sum(map(bool, treatment))
    assert trial.test == stats.two_proportion_z(x_t, n_treatment, x_c, n_control)
    assert trial.difference == pytest.approx(x_t / n_treatment - x_c / n_control)
    assert trial.arms[0].ci is not None
    assert (trial.arms[0].ci.lo, trial.arms[0].ci.hi) == stats.wilson_interval(x_c, n_control)
    assert trial.srm.test == stats.chi_square_goodness_of_fit([n_control, n_treatment], [0.5, 0.5])
    base = x_c / n_control
    needed = stats.n_two_proportions(base, base * 1.05, two_sided=True)
    assert trial.power.n_needed_per_arm == math.ceil(needed)
    assert trial.power.mde_at_current_n is not None and 0.05 < trial.power.mde_at_current_n < 1


def test_a_skewed_split_is_a_sample_ratio_mismatch(tmp_path: Path) -> None:
    rng = random.Random(11)
    n_control, n_treatment = users_split(rng, 4000, 0.4)  # 60/40 while 50/50 is configured
    record(
        tmp_path,
        "rank",
        [
            ("control", 0.5, bernoulli(rng, 0.10, n_control)),
            ("treatment", 0.5, bernoulli(rng, 0.13, n_treatment)),
        ],
    )
    report = make(tmp_path)
    trial = only(report)
    assert trial.srm.mismatch is True
    assert trial.srm.test is not None and trial.srm.test.p_value < experiments.SRM_ALPHA
    (warning,) = trial.warnings
    assert "Sample ratio mismatch on rank" in warning and "50.0%/50.0%" in warning
    # Loud everywhere: the terminal, the HTML banner, summary.json.
    out = StringIO()
    table.print_summary(report, out)
    assert "WARNING: Sample ratio mismatch" in out.getvalue() and "MISMATCH" in out.getvalue()
    assert '<div class="warn"><b>Sample ratio mismatch' in render.render(report)
    (entry,) = json.loads(summary.dumps(report))["experiments"]
    assert entry["srm"]["mismatch"] is True and entry["warnings"] == [warning]


def test_a_recording_without_shares_is_checked_against_equal_shares(tmp_path: Path) -> None:
    record(tmp_path, "rank", [("a", None, [1, 0] * 300), ("b", None, [1, 0, 0] * 200)])
    trial = only(make(tmp_path))
    assert trial.srm.expected_shares == {"a": 0.5, "b": 0.5}
    assert "equal shares" in trial.srm.note and trial.srm.mismatch is False
    assert trial.control == "a"  # no arm named control: the first by name


# --- continuous and ordinal ----------------------------------------------------------


def test_continuous_outcomes_get_welch(tmp_path: Path) -> None:
    rng = random.Random(3)
    control = [round(rng.gauss(60.0, 20.0), 3) for _ in range(700)]
    treatment = [round(rng.gauss(64.0, 30.0), 3) for _ in range(650)]
    record(tmp_path, "shop", [("control", 0.5, control), ("treatment", 0.5, treatment)], chaos=5)
    trial = only(make(tmp_path))
    assert trial.kind == "continuous"
    summaries = (
        statistics.fmean(treatment),
        statistics.variance(treatment),
        len(treatment),
        statistics.fmean(control),
        statistics.variance(control),
        len(control),
    )
    expected = stats.welch_t_test(*summaries)
    assert trial.test is not None
    assert trial.test.statistic == pytest.approx(expected.statistic)
    assert trial.test.p_value == pytest.approx(expected.p_value)
    assert trial.difference_ci is not None
    ci = stats.welch_ci(*summaries)
    assert (trial.difference_ci.lo, trial.difference_ci.hi) == pytest.approx(ci)
    # Rows with injected faults (outcome 100) are in no figure.
    assert [a.exposed for a in trial.arms] == [700, 650]
    sd = math.sqrt((699 * summaries[4] + 649 * summaries[1]) / (699 + 649))
    needed = stats.n_two_means(sd, 0.05 * summaries[3])
    assert trial.power.n_needed_per_arm == math.ceil(needed)


def test_likert_ratings_get_mann_whitney(tmp_path: Path) -> None:
    rng = random.Random(5)
    control = rng.choices([1, 2, 3, 4, 5], weights=[1, 2, 4, 3, 1], k=400)
    treatment = rng.choices([1, 2, 3, 4, 5], weights=[1, 1, 3, 4, 2], k=380)
    record(tmp_path, "rate", [("treatment", 0.5, treatment), ("control", 0.5, control)])
    trial = only(make(tmp_path))
    assert trial.kind == "ordinal" and trial.control == "control"
    expected = stats.mann_whitney_u(Counter(map(float, treatment)), Counter(map(float, control)))
    assert trial.test == expected
    assert trial.arms[1].mean == pytest.approx(statistics.fmean(treatment))
    # The same data forced to be continuous gets Welch instead.
    forced = only(make(tmp_path, outcome="continuous"))
    assert forced.kind == "continuous" and forced.test is not None
    assert forced.test.name == "Welch t"


# --- arms, canaries, warnings --------------------------------------------------------


def test_a_tiny_arm_is_warned_about_loudly(tmp_path: Path) -> None:
    record(
        tmp_path, "rank", [("control", 0.5, [1, 0, 0] * 719 + [0]), ("treatment", 0.5, [1] * 10)]
    )
    report = make(tmp_path)
    trial = only(report)
    assert trial.arms[0].with_outcome == 2158
    tiny = stats.tiny_arm_warning({"control": 2158, "treatment": 10}, unit="requests")
    assert tiny is not None and tiny in trial.warnings
    assert "'treatment' has 10 requests" in tiny
    out = StringIO()
    table.print_summary(report, out)
    assert "WARNING: Tiny arm" in out.getvalue()


def test_a_canary_compares_the_candidate_with_production(tmp_path: Path) -> None:
    record(
        tmp_path, "price", [("v2", 0.2, [0.0, 1.5] * 100), ("production", 0.8, [0.0, 1.0] * 400)]
    )
    trial = only(make(tmp_path))
    assert (trial.design, trial.control) == ("canary", "production")
    assert [a.name for a in trial.arms] == ["production", "v2"]
    assert trial.srm.mismatch is False
    assert trial.arms[1].difference == pytest.approx(0.75 - 0.5)


def test_route_filter_and_a_recording_without_exposures(tmp_path: Path) -> None:
    record(tmp_path, "a", [("control", 0.5, [1] * 200), ("treatment", 0.5, [0] * 200)])
    record(tmp_path, "b", [("control", 0.5, [1] * 200), ("treatment", 0.5, [0] * 200)])
    assert [e.route for e in make(tmp_path).experiments] == ["a", "b"]
    assert [e.route for e in make(tmp_path, filters=Filters(routes=("b",))).experiments] == ["b"]


def test_no_exposures_no_section(tmp_path: Path) -> None:
    from shadowproxy.report import synthetic
    from shadowproxy.report.synthetic import DatasetSpec, RouteSpec, ShadowSpec

    synthetic.generate(
        tmp_path, DatasetSpec(routes=(RouteSpec("m", 100, (ShadowSpec("s"),)),), temp_file=False)
    )
    report = make(tmp_path)
    assert report.experiments == [] and report.pairs
    assert "experiments" not in render.render(report)
    assert json.loads(summary.dumps(report))["experiments"] == []


def test_non_numeric_feedback_is_ignored_and_counted(tmp_path: Path) -> None:
    record(tmp_path, "rank", [("control", 0.5, [1, 0] * 150), ("treatment", 0.5, [1, 0] * 150)])
    rows = [
        {"request_id": f"rank-control-{n:05d}", "label": '"great"', "ts": ts_micros(START + 900)}
        for n in range(20)
    ]
    write(tmp_path, feedback_directory("2024-05-01"), rows, FEEDBACK_SCHEMA)
    trial = only(make(tmp_path))
    assert trial.ignored == 20 and trial.arms[0].with_outcome == 280


# --- the real proxy: POST /feedback with outcomes ------------------------------------


async def test_outcomes_posted_to_the_proxy_reach_the_report(tmp_path: Path) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"predictions": [1]})

    async with upstream(answer) as production, upstream(answer) as a, upstream(answer) as b:
        ab = route("rank", production.url, mode="ab")
        ab["ab"] = {
            "arms": [
                {"name": "control", "url": a.url, "weight": 50},
                {"name": "treatment", "url": b.url, "weight": 50},
            ],
            "assignment_key": "header:X-User-Id",
        }
        config = load_config(write_config(tmp_path, [ab]))
        metrics = Metrics(CollectorRegistry())
        comparer = Comparer(config.routes)
        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
        server = Server(config, metrics, recorder, recorder, comparer.auto_choices)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            admin_host, admin_port = server.admin_address  # type: ignore[misc]
            outcomes = []
            async with aiohttp.ClientSession() as session:
                for user in range(300):
                    async with session.post(
                        f"http://{host}:{port}/v1/models/rank:predict",
                        json={"instances": [1]},
                        headers={"X-User-Id": f"user-{user}"},
                    ) as response:
                        request_id = response.headers["X-Request-Id"]
                        arm = response.headers["X-Experiment-Arm"]
                    # Treatment converts every time, control every other user.
                    converted = arm == "treatment" or user % 2 == 0
                    outcomes.append({"request_id": request_id, "outcome": converted})
                url = f"http://{admin_host}:{admin_port}/feedback"
                async with session.post(url, json=outcomes) as response:
                    assert response.status == 202, await response.text()
        finally:
            await server.stop()

    root = tmp_path / "shadow-logs"
    arms = Counter(read_exposures(str(root)).column("arm").to_pylist())
    trial = only(make(root))
    assert trial.kind == "binary"
    by_name = {a.name: a for a in trial.arms}
    assert {name: arm.with_outcome for name, arm in by_name.items()} == dict(arms)
    assert by_name["treatment"].mean == 1.0
    assert by_name["control"].mean is not None and 0.3 < by_name["control"].mean < 0.7
    assert trial.srm.mismatch is False


# --- pure pieces ---------------------------------------------------------------------


def test_arm_choice() -> None:
    def rows(*names: str) -> list[dict[str, Any]]:
        return [{"arm": n} for n in names]

    assert experiments.choose_arms(rows("production")) is None
    assert experiments.choose_arms(rows("b")) is None
    design, chosen = experiments.choose_arms(rows("production", "b", "a")) or ("", [])
    assert design == "ab" and [r["arm"] for r in chosen] == ["a", "b"]
    design, chosen = experiments.choose_arms(rows("z", "control", "production")) or ("", [])
    assert [r["arm"] for r in chosen] == ["control", "z"]
    design, chosen = experiments.choose_arms(rows("v2", "production")) or ("", [])
    assert design == "canary" and [r["arm"] for r in chosen] == ["production", "v2"]


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ({"a": {0.0: 3, 1.0: 2}}, "binary"),
        ({"a": {1.0: 3}, "b": {0.0: 1}}, "binary"),
        ({"a": {1.0: 3, 2.0: 1}, "b": {5.0: 2}}, "ordinal"),
        ({"a": {1.5: 3}, "b": {2.0: 1}}, "continuous"),
        (None, "continuous"),
    ],
)
def test_kind_detection(values: dict[str, dict[float, int]] | None, kind: str) -> None:
    assert experiments.detect_kind(values) == kind


def test_a_moving_canary_share_is_not_tested() -> None:
    rows = [
        {"arm": "production", "exposed": 500, "share": 0.5, "share_min": 0.5, "share_max": 0.8},
        {"arm": "v2", "exposed": 300, "share": 0.5, "share_min": 0.2, "share_max": 0.5},
    ]
    srm = experiments.sample_ratio(rows)
    assert srm.test is None and srm.mismatch is None and "changed within the window" in srm.note
