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

from shadowproxy import stats
from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder
from shadowproxy.recording.schema import (
    EXPOSURES_SCHEMA,
    FEEDBACK_SCHEMA,
    to_record_batch,
    ts_micros,
)
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
    summary,
    table,
)
from shadowproxy.report.model import Experiment, Report
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
    keyed: bool = True,
) -> None:
    """Exposures of ``route_name`` (one per outcome, arms interleaved in time) and their
    feedback; ``chaos`` extra rows per arm carry an injected fault and outcome 100.
    ``keyed``: each request is a user of its own (sticky assignment, one visit each);
    else the exposures name no unit (random assignment)."""
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
                    "unit": f"u-{arm}-{n}" if keyed else None,
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


@pytest.mark.parametrize(("keyed", "unit"), [(True, "users"), (False, "requests")])
def test_a_tiny_arm_is_warned_about_loudly(tmp_path: Path, keyed: bool, unit: str) -> None:
    record(
        tmp_path,
        "rank",
        [("control", 0.5, [1, 0, 0] * 719 + [0]), ("treatment", 0.5, [1] * 10)],
        keyed=keyed,
    )
    report = make(tmp_path)
    trial = only(report)
    assert trial.arms[0].with_outcome == 2158
    tiny = stats.tiny_arm_warning({"control": 2158, "treatment": 10}, unit=unit)
    assert tiny is not None and tiny in trial.warnings
    assert f"'treatment' has 10 {unit}" in tiny
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
    from tests import synthetic
    from tests.synthetic import DatasetSpec, RouteSpec, ShadowSpec

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


# --- per user: sticky assignment ----------------------------------------------------

Visit = tuple[str, str | None, Outcome]
"""One request: (arm, its unit or None, its outcome)."""


def record_visits(
    root: Path, route_name: str, visits: Sequence[Visit], shares: dict[str, float]
) -> None:
    """Exposures of ``route_name`` in the order given, each with its feedback."""
    exposures, feedback = [], []
    for n, (arm, unit, outcome) in enumerate(visits):
        request_id, ts = f"{route_name}-{n:06d}", START + n
        exposures.append(
            {
                "ts": ts_micros(ts),
                "request_id": request_id,
                "arm": arm,
                "unit": unit,
                "status": 200,
                "latency_ms": 10.0,
                "error": None,
                "chaos": None,
                "share": shares[arm],
            }
        )
        if outcome is not None:
            feedback.append(
                {"request_id": request_id, "label": json.dumps(outcome), "ts": ts_micros(ts)}
            )
    write(root, exposures_directory(route_name, "2024-05-01"), exposures, EXPOSURES_SCHEMA)
    if feedback:
        write(root, feedback_directory("2024-05-01"), feedback, FEEDBACK_SCHEMA)


Users = dict[str, list[list[Outcome]]]
"""arm -> one list of outcomes (one per request) per user."""


def visits_of(users: Users, *, keyed: bool = True) -> list[Visit]:
    """Every user's requests, arm by arm; ``keyed=False`` leaves the units out, as
    random assignment records them."""
    out: list[Visit] = []
    for arm, outcomes in users.items():
        for user, requests in enumerate(outcomes):
            unit = f"{arm}-user-{user}" if keyed else None
            out.extend((arm, unit, outcome) for outcome in requests)
    return out


def sticky_users(
    rng: random.Random, users: int, requests: int, propensity: dict[str, tuple[float, float]]
) -> Users:
    """``users`` split at random between the arms; each has a fixed propensity drawn
    from the arm's Beta(a, b) and converts on each of ``requests`` visits with it."""
    arms = list(propensity)
    out: Users = {arm: [] for arm in arms}
    for _ in range(users):
        arm = rng.choice(arms)
        p = rng.betavariate(*propensity[arm])
        out[arm].append([rng.random() < p for _ in range(requests)])
    return out


def figures(trial: Experiment) -> list[float]:
    """Every number of an experiment, flat (NaN for none), to compare two of them with
    ``approx``: DuckDB's sums of many doubles may differ in the last bits with their order."""
    numbers: list[float | None] = []
    for arm in trial.arms:
        numbers += [arm.exposed, arm.with_outcome, arm.requests, arm.mean, arm.difference]
        for ci in (arm.ci, arm.difference_ci):
            numbers += [None, None] if ci is None else [ci.lo, ci.hi]
        numbers.append(arm.p_value)
    for test in (trial.test, trial.srm.test):
        numbers += [None, None] if test is None else [test.statistic, test.p_value]
    numbers += [trial.power.n_needed_per_arm, trial.power.mde_at_current_n]
    return [math.nan if n is None else float(n) for n in numbers]


def user_means(users: Users, arm: str) -> list[float]:
    return [statistics.fmean(map(float, requests)) for requests in users[arm]]


BETA = {"control": (0.2, 1.8), "treatment": (0.26, 1.74)}
"""Propensities with means 0.10 and 0.13 and a large spread between users: a third of
the variance of a request's outcome lies between users (ten requests per user then
carry the information of about 2.5 independent ones)."""
BETA_EFFECT = 0.13 - 0.10


def test_users_with_several_requests_are_analysed_per_user(tmp_path: Path) -> None:
    rng = random.Random(21)
    users: Users = {"control": [], "treatment": []}
    for _ in range(3000):
        arm = rng.choice(["control", "treatment"])
        p = rng.betavariate(*BETA[arm])
        users[arm].append([rng.random() < p for _ in range(rng.randint(1, 12))])
    record_visits(tmp_path, "rank", visits_of(users), {"control": 0.5, "treatment": 0.5})
    trial = only(make(tmp_path))
    assert (trial.unit, trial.kind, trial.units_in_several_arms) == ("user", "binary", 0)
    # Users' rates other than 0 and 1: they are compared as means, by Welch's t.
    assert trial.test is not None and trial.test.name == "Welch t"
    assert trial.difference_ci is not None
    assert trial.difference_ci.lo < BETA_EFFECT < trial.difference_ci.hi
    # The figures are stats.py's on the users' rates, computed here from the raw data.
    t, c = user_means(users, "treatment"), user_means(users, "control")
    summaries = (
        statistics.fmean(t),
        statistics.variance(t),
        len(t),
        statistics.fmean(c),
        statistics.variance(c),
        len(c),
    )
    expected = stats.welch_t_test(*summaries)
    assert trial.test.statistic == pytest.approx(expected.statistic)
    assert trial.test.p_value == pytest.approx(expected.p_value)
    ci = stats.welch_ci(*summaries)
    assert (trial.difference_ci.lo, trial.difference_ci.hi) == pytest.approx(ci)
    for arm, rates in zip(trial.arms, (c, t), strict=True):
        assert arm.mean == pytest.approx(statistics.fmean(rates))
        assert arm.ci is not None and (arm.ci.lo, arm.ci.hi) == pytest.approx(
            stats.mean_ci(statistics.fmean(rates), statistics.variance(rates), len(rates))
        )
    assert [a.exposed for a in trial.arms] == [len(c), len(t)]
    assert [a.with_outcome for a in trial.arms] == [len(c), len(t)]
    assert [a.requests for a in trial.arms] == [sum(map(len, users[a])) for a in users]
    # The split is checked on users, and so is the power.
    assert trial.srm.observed == {"control": len(c), "treatment": len(t)}
    assert trial.srm.test == stats.chi_square_goodness_of_fit([len(c), len(t)], [0.5, 0.5])
    sd = math.sqrt(
        ((len(c) - 1) * summaries[4] + (len(t) - 1) * summaries[1]) / (len(c) + len(t) - 2)
    )
    needed = stats.n_two_means(sd, 0.05 * summaries[3])
    assert trial.power.n_needed_per_arm == math.ceil(needed)


SEEDS = range(30)


def test_correlated_requests_need_the_per_user_interval(tmp_path: Path) -> None:
    """Each user has a fixed propensity and 10 requests. Analysed per request (the same
    data without units), the interval is about half as wide as it should be and misses
    the true effect far more often than 5% of the time; per user it covers it at about
    the nominal rate."""
    for seed in SEEDS:
        users = sticky_users(random.Random(seed), 300, 10, BETA)
        shares = {"control": 0.5, "treatment": 0.5}
        record_visits(tmp_path, f"user-{seed:02d}", visits_of(users), shares)
        record_visits(tmp_path, f"request-{seed:02d}", visits_of(users, keyed=False), shares)
    trials = {trial.route: trial for trial in make(tmp_path).experiments}
    covered = {"user": 0, "request": 0}
    ratios = []
    for seed in SEEDS:
        per_user, per_request = trials[f"user-{seed:02d}"], trials[f"request-{seed:02d}"]
        assert (per_user.unit, per_request.unit) == ("user", "request")
        for trial in (per_user, per_request):
            ci = trial.difference_ci
            assert ci is not None
            covered[trial.unit] += ci.lo <= BETA_EFFECT <= ci.hi
        assert per_user.difference_ci is not None and per_request.difference_ci is not None
        ratios.append(
            (per_request.difference_ci.hi - per_request.difference_ci.lo)
            / (per_user.difference_ci.hi - per_user.difference_ci.lo)
        )
        # Per request the users' correlated requests pass for independent ones.
        assert [a.with_outcome for a in per_request.arms] == [
            10 * a.with_outcome for a in per_user.arms
        ]
    assert max(ratios) < 0.75 and statistics.fmean(ratios) < 0.6
    assert covered["user"] >= 0.85 * len(SEEDS)
    assert covered["request"] <= covered["user"] - 5


def test_users_in_two_arms_are_counted_left_out_and_warned_about(tmp_path: Path) -> None:
    rng = random.Random(13)
    users = sticky_users(rng, 1200, 3, BETA)
    shares = {"control": 0.5, "treatment": 0.5}
    # Seven users seen in both arms, converting every time: in no figure.
    crossing: list[Visit] = [
        (arm, f"both-{user}", True) for user in range(7) for arm in ("control", "treatment")
    ]
    record_visits(tmp_path, "clean", visits_of(users), shares)
    record_visits(tmp_path, "rank", [*visits_of(users), *crossing], shares)
    report = make(tmp_path)
    clean, trial = report.experiments
    assert (clean.units_in_several_arms, trial.units_in_several_arms) == (0, 7)
    assert figures(trial) == pytest.approx(figures(clean), rel=1e-12, nan_ok=True)
    assert trial.srm.observed == {arm: len(users[arm]) for arm in users}
    warning = trial.warnings[0]
    assert warning.startswith("7 users of rank were seen in more than one arm under a fixed")
    assert "sticky assignment is broken" in warning
    # Loud everywhere, and each output says what was analysed.
    out = StringIO()
    table.print_summary(report, out)
    terminal = out.getvalue()
    assert "experiment rank (ab, binary, per user)" in terminal
    assert f"WARNING: {warning[:40]}" in terminal
    assert "unit of analysis: per user (hashed assignment key)" in terminal
    assert "7 users seen in several arms left out" in terminal
    html = render.render(report)
    assert f'<div class="warn"><b>{warning[:40]}' in html
    assert "unit of analysis: per user (hashed assignment key)" in html
    entries = {e["route"]: e for e in json.loads(summary.dumps(report))["experiments"]}
    assert entries["rank"]["unit"] == "user" and entries["rank"]["units_in_several_arms"] == 7
    assert entries["clean"]["units_in_several_arms"] == 0
    assert entries["rank"]["arms"][0]["requests"] == 3 * len(users["control"])


def test_users_moved_by_a_canary_step_are_left_out_with_the_reason(tmp_path: Path) -> None:
    visits: list[Visit] = []
    for user in range(400):
        moved = user < 40  # at the step from 5% to 25% these move to the candidate
        before = "v2" if user < 20 else "production"
        after = "v2" if user < 20 or moved else "production"
        visits += [(before, f"u{user}", user % 3 == 0), (after, f"u{user}", user % 3 == 0)]
    shares = {"v2": 0.05, "production": 0.95}
    first, second = visits[::2], visits[1::2]
    record_visits(tmp_path, "price", first, shares)
    record_visits(tmp_path, "price", second, {"v2": 0.25, "production": 0.75})
    trial = only(make(tmp_path))
    assert trial.units_in_several_arms == 20
    assert "the configured shares changed within the window" in trial.warnings[0]
    assert {a.name: a.exposed for a in trial.arms} == {"production": 360, "v2": 20}


@pytest.mark.parametrize(
    ("ratings", "kind", "test_name"),
    [
        ([1, 2, 3, 4, 5], "ordinal", "Mann-Whitney U"),
        ([0.5, 1.25, 7.0, 30.5], "continuous", "Welch t"),
    ],
)
def test_per_user_figures_are_those_of_the_users_means(
    tmp_path: Path, ratings: list[float], kind: str, test_name: str
) -> None:
    rng = random.Random(17)
    users: Users = {"control": [], "treatment": []}
    for user in range(900):
        arm = "treatment" if user % 2 else "control"
        taste = rng.choices(ratings, k=2)  # a user keeps to a couple of values
        shift = arm == "treatment" and rng.random() < 0.2
        users[arm].append([max(taste) if shift else rng.choice(taste) for _ in range(4)])
    # Requests without an assignment key were assigned at random: units of their own.
    keyless = [float(ratings[n % len(ratings)]) for n in range(30)]
    visits = [*visits_of(users), *(("control", None, rating) for rating in keyless)]
    record_visits(tmp_path, "rate", visits, {"control": 0.5, "treatment": 0.5})
    trial = only(make(tmp_path))
    assert (trial.unit, trial.kind) == ("user", kind)
    assert trial.test is not None and trial.test.name == test_name
    c = user_means(users, "control") + keyless
    t = user_means(users, "treatment")
    assert [a.exposed for a in trial.arms] == [len(c), len(t)]
    assert trial.arms[0].mean == pytest.approx(statistics.fmean(c))
    summaries = (
        statistics.fmean(t),
        statistics.variance(t),
        len(t),
        statistics.fmean(c),
        statistics.variance(c),
        len(c),
    )
    assert trial.difference_ci is not None
    ci = stats.welch_ci(*summaries)
    assert (trial.difference_ci.lo, trial.difference_ci.hi) == pytest.approx(ci)
    if kind == "ordinal":
        assert trial.test == stats.mann_whitney_u(Counter(t), Counter(c))
    else:
        assert trial.test.p_value == pytest.approx(stats.welch_t_test(*summaries).p_value)


@pytest.mark.parametrize(
    "outcomes",
    [
        pytest.param(lambda rng: bernoulli(rng, 0.2, 900), id="binary"),
        pytest.param(lambda rng: rng.choices([1, 2, 3, 4, 5], k=900), id="ordinal"),
        pytest.param(lambda rng: [round(rng.gauss(50, 9), 2) for _ in range(900)], id="continuous"),
    ],
)
def test_one_request_per_user_gives_the_per_request_figures(tmp_path: Path, outcomes: Any) -> None:
    """Random assignment keeps the per-request analysis; users who visit once each get
    the same figures (for binary outcomes: the same two-proportion test), per user."""
    rng = random.Random(29)
    arms = [("control", 0.5, outcomes(rng)), ("treatment", 0.5, outcomes(rng))]
    record(tmp_path / "keyed", "rank", arms)
    record(tmp_path / "random", "rank", arms, keyed=False)
    report = make(tmp_path / "random")
    keyed, randomly = only(make(tmp_path / "keyed")), only(report)
    assert (keyed.unit, randomly.unit) == ("user", "request")
    assert keyed.test is not None and randomly.test is not None
    assert keyed.test.name == randomly.test.name
    assert figures(keyed) == pytest.approx(figures(randomly), rel=1e-12, nan_ok=True)
    assert keyed.srm == randomly.srm
    out = StringIO()
    table.print_summary(report, out)
    assert "unit of analysis: per request (random assignment)" in out.getvalue()
    assert "experiment rank (ab, " in out.getvalue() and ", per request)" in out.getvalue()
    (entry,) = json.loads(summary.dumps(report))["experiments"]
    assert entry["unit"] == "request" and entry["units_in_several_arms"] == 0


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
    ("kind", "mixed", "method"),
    [
        ("binary", 0, experiments.PROPORTIONS),
        ("binary", 1, experiments.WELCH),
        ("ordinal", 1, experiments.MANN_WHITNEY),
        ("continuous", 0, experiments.WELCH),
        (None, 0, None),
    ],
)
def test_comparison_method(kind: str | None, mixed: int, method: str | None) -> None:
    rows = [{"arm": "control", "mixed": 0}, {"arm": "treatment", "mixed": mixed}]
    assert experiments.comparison_method(kind, rows) == method
    # Rows per request have no users, so no rates between 0 and 1.
    assert experiments.comparison_method(kind, [{"arm": "a"}]) == (
        experiments.PROPORTIONS if kind == "binary" else method
    )


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
