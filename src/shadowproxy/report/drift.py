"""The report's Drift section: inputs and predictions without labels, and releases.

Needs the routes' ``monitor:`` blocks (``shadowproxy report --config FILE``). For each
monitored route::

    telemetry/ + pairs/ (one row per request) ──► production's watched answers
        │  split: the reference window (monitor.reference) and the current one
        │  (the report's --since/--until window minus the reference rows)
        ▼
    each feature and the prediction ──► stats.drift (KS + PSI, or chi-square + PSI),
        Holm across the route, flagged on p < alpha AND PSI >= psi_threshold
    model_version changes ──► jump_window answers before against as many after
    invariants ──► counts, rates, Wilson intervals, example request ids
    weekly means and prediction mix ──► charts of slow drift

Without ``monitor.reference`` the reference is the first half of the window's answers
(by time) and the current window the second half. ``{last_days: N}``: the current
window starts at ``--since`` (or N days before the last answer) and the reference is
the N days before it. The pure part (``route_drift``) takes plain rows, so the
statistics are tested without DuckDB; ``load`` is the only function here that queries.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from shadowproxy.monitor import observe
from shadowproxy.monitor.categories import CategoryBound
from shadowproxy.monitor.spec import MonitorConfig, ReferenceSpec
from shadowproxy.report import queries_drift
from shadowproxy.stats import drift as stats
from shadowproxy.stats import wilson_interval

if TYPE_CHECKING:
    import duckdb

    from shadowproxy.report.load import Dataset
    from shadowproxy.report.options import ReportOptions

MAX_ANSWERS = 200_000
"""Production answers read per route (a seeded sample beyond; the section says so)."""
MAX_JUMPS = 20
"""Version changes listed per route; a flapping deployment would list thousands."""
EXAMPLES = 5
"""Example request ids per invariant and role."""
PRODUCTION = "production"
REQUEST = "request"


@dataclass(frozen=True, slots=True)
class Answer:
    """One watched production answer, as recorded."""

    request_id: str
    ts: float
    request: Any
    """The parsed request body; None when it was not recorded or is not JSON."""
    prediction: Any
    version: str | None = None
    violations: tuple[str, ...] | None = None
    request_violations: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ShadowAnswer:
    shadow: str
    request_id: str
    violations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Jump:
    at: float
    from_version: str
    to_version: str
    prediction: stats.Drift | None
    violation_rate: tuple[float, float]
    """Share of answers breaking any invariant, before and after."""
    flagged: bool


@dataclass(frozen=True, slots=True)
class InvariantCount:
    name: str
    role: str
    count: int
    n: int
    examples: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.count / self.n if self.n else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.count, self.n) if self.n else (math.nan, math.nan)


@dataclass(slots=True)
class RouteDrift:
    route: str
    reference: str
    """How the reference was chosen, for the section's text."""
    n_reference: int
    n_current: int
    features: list[stats.Drift] = field(default_factory=list)
    prediction: stats.Drift | None = None
    jumps: list[Jump] = field(default_factory=list)
    jumps_not_listed: int = 0
    invariants: list[InvariantCount] = field(default_factory=list)
    weekly: list[tuple[datetime, dict[str, float]]] = field(default_factory=list)
    """Per week: each numeric feature's mean, the numeric prediction's mean or each
    class's share of the predictions (``class <name>``)."""
    sampled: bool = False


@dataclass(slots=True)
class DriftSection:
    """What the report shows; ``note`` says why there is nothing (no --config)."""

    routes: dict[str, RouteDrift] = field(default_factory=dict)
    note: str | None = None


# --- windows -------------------------------------------------------------------------


def split(
    answers: Sequence[Answer],
    reference: ReferenceSpec | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[list[Answer], list[Answer], str]:
    """(reference, current, how) for answers sorted by time. ``reference.root`` is
    handled by the caller (the reference answers come from another recording)."""
    end = until.timestamp() if until else math.inf
    if reference is None or reference.root is not None:
        start = since.timestamp() if since else -math.inf
        window = [a for a in answers if start <= a.ts < end]
        if reference is not None:
            return [], window, f"the recording {reference.root}"
        half = len(window) // 2
        return window[:half], window[half:], "the first half of the window's answers"
    if reference.last_days is not None:
        days = timedelta(days=reference.last_days).total_seconds()
        last = answers[-1].ts if answers else 0.0
        start = since.timestamp() if since else last - days
        ref = [a for a in answers if start - days <= a.ts < start]
        current = [a for a in answers if start <= a.ts < end]
        return ref, current, f"the {reference.last_days} days before the current window"
    assert reference.since is not None and reference.until is not None
    low, high = _epoch(reference.since), _epoch(reference.until)
    ref = [a for a in answers if low <= a.ts < high]
    start = since.timestamp() if since else -math.inf
    current = [a for a in answers if start <= a.ts < end and not low <= a.ts < high]
    return ref, current, f"{reference.since} to {reference.until} (exclusive)"


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    return moment.timestamp()


# --- the analysis (pure) ---------------------------------------------------------------


def route_drift(
    route: str,
    config: MonitorConfig,
    reference: Sequence[Answer],
    current: Sequence[Answer],
    shadows: Sequence[ShadowAnswer] = (),
    how: str = "",
) -> RouteDrift:
    """Features, prediction, jumps, invariants and the weekly trend of one route."""
    result = RouteDrift(route, how, len(reference), len(current))
    tested = [_feature(spec, reference, current) for spec in config.features]
    kind = _prediction_kind(config, [*reference, *current])
    if kind is not None:
        tested.append(_prediction(config, kind, reference, current))
    flagged = stats.flag(tested, config.alpha, config.psi_threshold)
    result.features = flagged[: len(config.features)]
    result.prediction = flagged[-1] if kind is not None else None
    window = sorted([*reference, *current], key=lambda a: (a.ts, a.request_id))
    result.jumps, result.jumps_not_listed = _jumps(config, kind, window)
    result.invariants = _invariants(config, window, shadows)
    result.weekly = _weekly(config, kind, window)
    return result


def _feature(spec: Any, reference: Sequence[Answer], current: Sequence[Answer]) -> stats.Drift:
    feature = observe.Feature.build(spec)
    if spec.kind == "numeric":
        return stats.numeric_drift(
            spec.name, _numbers(feature.numbers, reference), _numbers(feature.numbers, current)
        )
    bound = CategoryBound(spec.max_categories, spec.categories)
    ref = _counts(feature.categories, reference, bound)
    cur = _counts(feature.categories, current, bound)
    return stats.categorical_drift(spec.name, ref, cur)


def _numbers(read: Any, answers: Iterable[Answer]) -> list[float]:
    return [v for a in answers if a.request is not None for v in read(a.request)]


def _counts(read: Any, answers: Iterable[Answer], bound: CategoryBound) -> Counter[str]:
    return Counter(
        bound.label(v) for a in answers if a.request is not None for v in read(a.request)
    )


def _prediction_kind(config: MonitorConfig, answers: Sequence[Answer]) -> str | None:
    for answer in answers:
        if answer.prediction is not None:
            return observe.resolve_kind(config.prediction.kind, answer.prediction)
    return None


def _prediction(
    config: MonitorConfig, kind: str, reference: Sequence[Answer], current: Sequence[Answer]
) -> stats.Drift:
    if kind == "numeric":
        return stats.numeric_drift(
            "prediction", _predicted_numbers(reference), _predicted_numbers(current)
        )
    bound = CategoryBound(config.prediction.max_categories, config.prediction.categories)
    return stats.categorical_drift(
        "prediction", _predicted_classes(reference, bound), _predicted_classes(current, bound)
    )


def _predicted_numbers(answers: Iterable[Answer]) -> list[float]:
    return [v for a in answers if a.prediction is not None for v in observe.numbers(a.prediction)]


def _predicted_classes(answers: Iterable[Answer], bound: CategoryBound) -> Counter[str]:
    return Counter(
        bound.label(v)
        for a in answers
        if a.prediction is not None
        for v in observe.labels(a.prediction)
    )


def _jumps(
    config: MonitorConfig, kind: str | None, window: Sequence[Answer]
) -> tuple[list[Jump], int]:
    """Every change of production's model version, compared over ``jump_window``."""
    changes: list[tuple[int, str, str]] = []
    previous: str | None = None
    for index, answer in enumerate(window):
        if answer.version is None:
            continue
        if previous is not None and answer.version != previous:
            changes.append((index, previous, answer.version))
        previous = answer.version
    jumps = []
    size = config.jump_window
    for index, old, new in changes[:MAX_JUMPS]:
        before, after = window[max(0, index - size) : index], window[index : index + size]
        moved = None
        if kind is not None:
            moved = stats.flag(
                [_prediction(config, kind, before, after)], config.alpha, config.psi_threshold
            )[0]
        rates = (_violation_rate(before), _violation_rate(after))
        flagged = moved is not None and moved.flagged
        jumps.append(Jump(window[index].ts, old, new, moved, rates, flagged))
    return jumps, max(0, len(changes) - MAX_JUMPS)


def _violation_rate(answers: Sequence[Answer]) -> float:
    if not answers:
        return math.nan
    return sum(1 for a in answers if a.violations) / len(answers)


def _invariants(
    config: MonitorConfig, window: Sequence[Answer], shadows: Sequence[ShadowAnswer]
) -> list[InvariantCount]:
    out = []
    shadow_names = sorted({s.shadow for s in shadows})
    for rule in config.invariants:
        if rule.target == "request":
            rows = [(a.request_id, a.request_violations) for a in window]
            out.append(_count(rule.name, REQUEST, rows))
            continue
        out.append(_count(rule.name, PRODUCTION, [(a.request_id, a.violations) for a in window]))
        for name in shadow_names:
            rows = [(s.request_id, s.violations) for s in shadows if s.shadow == name]
            out.append(_count(rule.name, name, rows))
    return out


def _count(
    name: str, role: str, rows: Iterable[tuple[str, tuple[str, ...] | None]]
) -> InvariantCount:
    checked = [(rid, broken) for rid, broken in rows if broken is not None]
    hits = [rid for rid, broken in checked if name in broken]
    return InvariantCount(name, role, len(hits), len(checked), tuple(hits[:EXAMPLES]))


def _weekly(
    config: MonitorConfig, kind: str | None, window: Sequence[Answer]
) -> list[tuple[datetime, dict[str, float]]]:
    weeks: dict[datetime, list[Answer]] = {}
    for answer in window:
        day = datetime.fromtimestamp(answer.ts, UTC).date()
        start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=day.weekday())
        weeks.setdefault(start, []).append(answer)
    out = []
    for start in sorted(weeks):
        answers = weeks[start]
        values: dict[str, float] = {}
        for spec in config.features:
            if spec.kind == "numeric":
                numbers = _numbers(observe.Feature.build(spec).numbers, answers)
                values[spec.name] = math.fsum(numbers) / len(numbers) if numbers else math.nan
        if kind == "numeric":
            numbers = _predicted_numbers(answers)
            values["prediction"] = math.fsum(numbers) / len(numbers) if numbers else math.nan
        elif kind == "label":
            bound = CategoryBound(config.prediction.max_categories, config.prediction.categories)
            counts = _predicted_classes(answers, bound)
            total = sum(counts.values())
            for label, count in counts.most_common(config.prediction.max_categories):
                values[f"class {label}"] = count / total
        out.append((start, values))
    return out


# --- reading the recording ------------------------------------------------------------


def load_answers(
    connection: duckdb.DuckDBPyConnection, route: str, has_telemetry: bool
) -> tuple[list[Answer], list[ShadowAnswer], bool]:
    """The route's watched production answers and shadow answers; True when sampled."""

    rows = connection.execute(
        queries_drift.drift_answers(route, MAX_ANSWERS, has_telemetry)
    ).fetchall()
    answers = [
        Answer(
            request_id=rid,
            ts=float(ts),
            request=_json(body),
            prediction=_json(prediction),
            version=version,
            violations=None if violations is None else tuple(violations),
            request_violations=None if request_violations is None else tuple(request_violations),
        )
        for rid, ts, body, prediction, version, violations, request_violations in rows
    ]
    shadow_rows = connection.execute(queries_drift.drift_shadow_answers(route)).fetchall()
    shadows = [ShadowAnswer(name, rid, tuple(broken)) for name, rid, _ts, broken in shadow_rows]
    return answers, shadows, len(answers) >= MAX_ANSWERS


def _json(value: Any) -> Any:
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def build(
    connection: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    options: ReportOptions,
    monitors: Mapping[str, MonitorConfig],
) -> DriftSection:
    """The section for every monitored route the report covers (the ``pairs_raw`` view
    is attached already; ``telemetry_raw`` is attached here)."""
    has_telemetry = attach_telemetry(connection, dataset)
    filters = options.filters
    section = DriftSection()
    for route in sorted(monitors):
        if filters.routes and route not in filters.routes:
            continue
        config = monitors[route]
        answers, shadows, sampled = load_answers(connection, route, has_telemetry)
        ref, current, how = split(answers, config.reference, filters.since, filters.until)
        if config.reference is not None and config.reference.root is not None:
            ref = _other_recording(config.reference.root, route, options)
        ids = {a.request_id for a in (*ref, *current)}
        shadows = [s for s in shadows if s.request_id in ids]
        result = route_drift(route, config, ref, current, shadows, how)
        result.sampled = sampled
        section.routes[route] = result
    return section


def attach_telemetry(connection: duckdb.DuckDBPyConnection, dataset: Dataset) -> bool:
    """The views ``drift_pairs`` (``pairs_raw`` with the monitor's columns, null in
    recordings made before them) and ``telemetry_raw``; False without telemetry."""
    from shadowproxy.report import load, queries

    present = {row[0] for row in connection.execute(queries.columns("pairs_raw").sql).fetchall()}
    absent = [(c, kind) for c, kind in queries_drift.DRIFT_COLUMNS if c not in present]
    connection.execute(queries.create_view("drift_pairs", "pairs_raw", absent))
    if not dataset.telemetry_files:
        return False
    source = load._source(connection, dataset, dataset.telemetry_files, "telemetry")
    connection.execute(queries.create_view("telemetry_raw", source))
    return True


def _other_recording(root: str, route: str, options: ReportOptions) -> list[Answer]:
    """``monitor.reference.root``: every watched answer of ``route`` in that recording."""
    from shadowproxy.report import load

    dataset = load.discover(root)
    with load.connect(options) as connection:
        load.attach_pairs(connection, dataset, dataset.pair_files, options)
        has_telemetry = attach_telemetry(connection, dataset)
        answers, _, _ = load_answers(connection, route, has_telemetry)
    return answers
