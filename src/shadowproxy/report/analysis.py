"""From query results to a :class:`~shadowproxy.report.model.Report`.

:func:`analyze` is the only function here that runs queries; it hands their rows
(lists of dicts) to pure builders, one per report section, which call
:mod:`~shadowproxy.stats`. The builders are tested with hand-made rows.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from shadowproxy import stats
from shadowproxy.report import (
    chaos,
    decision,
    experiments,
    groundtruth,
    intervals,
    queries,
    queries_runs,
    verdict,
)
from shadowproxy.report.engines import Rows, Runner
from shadowproxy.report.model import (
    OUTCOME_NAMES,
    Bin,
    Confusion,
    Example,
    Experiment,
    Interval,
    Latency,
    NoiseFloor,
    PairReport,
    Percentiles,
    Report,
    Segment,
    TimePoint,
)
from shadowproxy.report.options import ReportInputError, ReportOptions

Key = tuple[str, str]

BUCKETS_S = (1, 5, 10, 30, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 72
DIFF_BINS = 30
CONTINUOUS_KINDS = ("numeric", "probabilities")
"""Comparators whose ``diff_score`` is a distance worth a histogram."""
ALPHA = 0.05
BODY_PREVIEW_CHARS = 2000


def analyze(
    runner: Runner,
    options: ReportOptions,
    *,
    has_labels: bool,
    now: datetime,
    has_exposures: bool = False,
    has_telemetry: bool = False,
) -> Report:
    """Run every query and assemble the report (the only I/O in this module)."""
    d = runner.dialect
    pairs = build_pairs(runner.rows(queries.pair_summary(d)))
    excluded = chaos.excluded(runner.rows(queries_runs.chaos_excluded()))
    trials = run_experiments(runner, options, has_labels) if has_exposures else []
    if not pairs and not excluded and not trials and not has_telemetry:
        raise ReportInputError(f"no rows in {options.root} match the filters {_filters(options)}")
    for key, count in excluded.items():
        if key in pairs:
            pairs[key].chaos_excluded = count
    bucket = BUCKETS_S[0]
    if pairs:  # else every row carries an injected fault: only the chaos section has rows
        bucket = choose_bucket(
            min(p.first_ts for p in pairs.values() if p.first_ts),
            max(p.last_ts for p in pairs.values() if p.last_ts),
        )
    add_timelines(pairs, runner.rows(queries.agreement_over_time(bucket, d)), bucket)
    add_latency(pairs, runner, options)
    add_diff_histograms(pairs, runner)
    add_confusions(pairs, runner.rows(queries.confusion(options.top_classes, d)))
    add_examples(pairs, runner, options.examples_per_pair)
    for path in options.segments:
        rows = runner.rows(queries.segments(path, options.top_segments, d))
        add_segments(pairs, path.text, rows)
    if has_labels:
        groundtruth.add_labels(pairs, runner, options)
    add_noise_floors(list(pairs.values()))
    for pair in pairs.values():
        pair.verdict = verdict.verdict(pair)
    decision.decide_all(pairs.values(), dict(options.promotions))
    warnings = input_warnings(pairs.values())
    return Report(
        generated_at=now,
        root=options.root,
        filters=options.filters.as_json(),
        pairs=list(pairs.values()),
        bucket_seconds=bucket,
        segment_paths=tuple(p.text for p in options.segments),
        labels_available=has_labels,
        chaos=chaos.checks(runner.rows(queries_runs.chaos_checks(d))) if excluded else [],
        experiments=trials,
        warnings=warnings,
    )


def input_warnings(pairs: Iterable[PairReport]) -> list[str]:
    """What the reader must know before trusting a figure: rows left out for a NaN or
    infinite latency, and label rows folded because their request was already counted."""
    out = []
    for pair in pairs:
        if pair.nonfinite_latency:
            out.append(
                f"{pair.route} / {pair.shadow}: {pair.nonfinite_latency:,} row(s) with a NaN "
                "or infinite latency, left out of the latency figures"
            )
        if pair.labels is not None and pair.labels.duplicates:
            out.append(
                f"{pair.route} / {pair.shadow}: {pair.labels.duplicates:,} duplicate row(s) of "
                "already counted requests folded (retries keep their request id); each "
                "labelled request counts once"
            )
    return out


def run_experiments(runner: Runner, options: ReportOptions, has_labels: bool) -> list[Experiment]:
    d = runner.dialect
    arms = runner.rows(queries_runs.experiment_arms(has_labels, d))
    if not arms:
        return []
    limit = None if options.outcome == "ordinal" else experiments.ORDINAL_MAX_VALUES
    values = runner.rows(queries_runs.experiment_values(has_labels, limit, d))
    units: Rows = []
    unit_values: Rows = []
    if any(row["with_unit"] for row in arms):  # else every route is analysed per request
        units = runner.rows(queries_runs.experiment_units(has_labels, d))
        unit_values = runner.rows(queries_runs.experiment_unit_values(has_labels, limit, d))
    return experiments.build(
        arms, values, units, unit_values, outcome=options.outcome, mde=options.mde
    )


def _filters(options: ReportOptions) -> str:
    chosen = {k: v for k, v in options.filters.as_json().items() if v}
    return json.dumps(chosen) if chosen else "(none)"


# --- volume, outcomes, agreement -----------------------------------------------------


def build_pairs(rows: Rows) -> dict[Key, PairReport]:
    return {(row["route"], row["shadow"]): _pair(row) for row in rows if row["rows"]}


def _pair(row: dict[str, Any]) -> PairReport:
    compared, agreed = int(row["compared"]), int(row["agreed"])
    return PairReport(
        route=row["route"],
        shadow=row["shadow"],
        role=row["role"] or "candidate",
        rows=int(row["rows"]),
        outcomes={name: int(row[name]) for name in OUTCOME_NAMES},
        compared=compared,
        agreed=agreed,
        agreement_rate=agreed / compared if compared else None,
        agreement_ci=Interval(*stats.wilson_interval(agreed, compared)) if compared else None,
        comparator=row["comparator"] or "",
        prod_5xx_rate=_rate(row["prod_5xx"], row["prod_responses"]),
        shadow_5xx_rate=_rate(row["shadow_5xx"], row["shadow_responses"]),
        status_mismatch=int(row["status_mismatch"]),
        latency=Latency(
            production=_percentiles(row["prod_q"]),
            shadow=_percentiles(row["shadow_q"]),
            pairs=int(row["latency_pairs"]),
            sample=0,
            test=None,
            mean_diff=None,
            mean_diff_ci=None,
        ),
        first_ts=row["first_ts"],
        last_ts=row["last_ts"],
        diff_range=(row["diff_min"], row["diff_p99"], row["diff_max"]),
        nonfinite_latency=int(row.get("nonfinite_latency") or 0),
        latency_diff=intervals.moments(
            int(row["latency_pairs"]), row.get("latency_d_sum"), row.get("latency_d_sq")
        ),
        errors=(
            int(row.get("sent") or 0),
            int(row.get("shadow_failed") or 0),
            int(row.get("prod_failed") or 0),
        ),
    )


def _rate(part: int | None, whole: int | None) -> float | None:
    return part / whole if whole and part is not None else None


def _percentiles(values: Sequence[float] | None) -> Percentiles:
    if not values:
        return Percentiles(None, None, None)
    return Percentiles(*(float(v) for v in values))


def choose_bucket(first: datetime, last: datetime) -> int:
    """Bucket width in seconds that suits the run's length: the finest that keeps the
    chart under ``MAX_BUCKETS`` points: 5 seconds for a two-minute demo, hourly for a
    recording of up to three days."""
    span = max((last - first).total_seconds(), 0.0)
    for width in BUCKETS_S:
        if span / width < MAX_BUCKETS:
            return width
    return BUCKETS_S[-1]


def add_timelines(pairs: dict[Key, PairReport], rows: Rows, bucket: int) -> None:
    for row in rows:
        pair = pairs.get((row["route"], row["shadow"]))
        if pair is None:
            continue
        compared, agreed = int(row["compared"]), int(row["agreed"])
        pair.timeline.append(
            TimePoint(
                start=datetime.fromtimestamp(row["bucket"] * bucket, UTC),
                compared=compared,
                agreed=agreed,
                rate=agreed / compared,
                ci=Interval(*stats.wilson_interval(agreed, compared)),
            )
        )


# --- latency -------------------------------------------------------------------------


def add_latency(pairs: dict[Key, PairReport], runner: Runner, options: ReportOptions) -> None:
    histograms = latency_bins(runner.rows(queries.latency_histogram(runner.dialect)))
    thresholds = queries.hash_thresholds(
        {key: pair.latency.pairs for key, pair in pairs.items()}, options.sample_size
    )
    samples: dict[Key, list[tuple[float, float]]] = defaultdict(list)
    if thresholds:
        query = queries.latency_sample(thresholds, options.sample_size, runner.dialect)
        for row in runner.rows(query):
            samples[(row["route"], row["shadow"])].append(
                (row["prod_latency_ms"], row["shadow_latency_ms"])
            )
    for key, pair in pairs.items():
        prod_hist, shadow_hist = histograms.get(key, ((), ()))
        sample = samples.get(key, [])
        pair.latency = replace(
            latency_test(pair.latency, sample, pair.latency_diff),
            production_hist=prod_hist,
            shadow_hist=shadow_hist,
            p99_log_se=p99_log_se(sample, pair.latency.pairs),
        )


MIN_P99_SAMPLE = 100
"""Below this many sampled pairs the p99's order-statistic interval is too coarse to
give its spread: the latency criterion stays open."""


def p99_log_se(sample: Sequence[tuple[float, float]], pairs: int) -> float | None:
    """Standard error of log(shadow p99 / production p99): each side's from the width of
    its distribution-free 95% interval in the sample (on the log scale, divided by
    2 x 1.96), scaled by sqrt(sample / pairs) to the full count, the two added in
    quadrature (sides treated as independent: conservative when they move together)."""
    if len(sample) < MIN_P99_SAMPLE or pairs <= 0:
        return None
    total = 0.0
    for side in (sorted(p for p, _ in sample), sorted(s for _, s in sample)):
        lo, hi = intervals.quantile_ci(side, 0.99)
        if lo <= 0.0:
            return None
        total += ((math.log(hi) - math.log(lo)) / (2.0 * stats.z_for(0.95))) ** 2
    return math.sqrt(total * len(sample) / pairs)


def latency_test(
    base: Latency, sample: Sequence[tuple[float, float]], diff: tuple[float, float] | None
) -> Latency:
    """The paired t test of the mean per-request (shadow - production) latency and the t
    interval it inverts, from the mean and variance over every pair (``diff``); the
    hash ``sample`` is kept for the p99 ratio's interval."""
    if diff is None or base.pairs < 2:
        return replace(base, sample=len(sample))
    paired = intervals.paired_t(diff[0], diff[1], base.pairs)
    return replace(
        base,
        sample=len(sample),
        test=paired.test,
        mean_diff=paired.mean,
        mean_diff_ci=Interval(*paired.ci),
    )


def latency_bins(rows: Rows) -> dict[Key, tuple[tuple[Bin, ...], tuple[Bin, ...]]]:
    """Both sides' log-scale histograms per pair, over one shared range of buckets."""
    counts: dict[Key, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        counts[(row["route"], row["shadow"])][row["side"]][int(row["bucket"])] = int(row["n"])
    k = queries.LATENCY_BUCKETS_PER_DOUBLING
    out = {}
    for key, sides in counts.items():
        buckets = [b for side in sides.values() for b in side]
        span = range(min(buckets), max(buckets) + 1)

        def bins(side: dict[int, int], span: range = span) -> tuple[Bin, ...]:
            return tuple(Bin(2 ** (b / k), 2 ** ((b + 1) / k), side.get(b, 0)) for b in span)

        out[key] = (bins(sides.get("production", {})), bins(sides.get("shadow", {})))
    return out


# --- diff scores and confusion matrices ----------------------------------------------


def add_diff_histograms(pairs: dict[Key, PairReport], runner: Runner) -> None:
    ranges = diff_ranges(pairs)
    if not ranges:
        return
    rows = runner.rows(queries.diff_histogram(list(ranges.values()), DIFF_BINS, runner.dialect))
    for row in rows:
        key = (row["route"], row["shadow"])
        _route, _shadow, lo, width = ranges[key]
        b = int(row["bin"])
        hi = lo + (b + 1) * width if b < DIFF_BINS - 1 else math.inf
        pairs[key].diff_histogram.append(Bin(lo + b * width, hi, int(row["n"])))


def diff_ranges(pairs: dict[Key, PairReport]) -> dict[Key, tuple[str, str, float, float]]:
    """``(low, width)`` per numeric pair: bins from the smallest score to the 99th
    percentile, the last bin collecting the top 1% so one outlier cannot flatten it.

    Only finite bounds make bins: an infinite 99th percentile falls back to the maximum
    if that is finite, else to unit bins (the infinite scores land in the overflow bin),
    and a pair whose smallest score is not finite has no histogram, since an infinite
    width or low makes every position NaN, which the engines would bin differently."""
    out = {}
    for key, pair in pairs.items():
        lo, p99, hi = pair.diff_range
        if pair.comparator not in CONTINUOUS_KINDS or lo is None or not math.isfinite(lo):
            continue
        tops = [t for t in (p99, hi) if t is not None and math.isfinite(t) and t > lo]
        width = (tops[0] - lo) / (DIFF_BINS - 1) if tops else 1.0
        if not math.isfinite(width) or width <= 0:  # the span overflows a double
            continue
        out[key] = (key[0], key[1], float(lo), float(width))
    return out


def add_confusions(pairs: dict[Key, PairReport], rows: Rows) -> None:
    cells: dict[Key, dict[tuple[str, str], int]] = defaultdict(dict)
    for row in rows:
        cells[(row["route"], row["shadow"])][(row["p"], row["s"])] = int(row["n"])
    for key, matrix in cells.items():
        if key in pairs:
            pairs[key].confusion = Confusion(class_order(matrix), matrix)


def class_order(cells: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """The classes in a stable order: by name (numbers by value), ``(none)`` and then
    ``(other)`` last. Which classes are kept when there are more than the limit is the
    query's choice (by volume); their order here does not depend on volume, so the
    same classes always draw the same matrix."""
    names = {c for pair in cells for c in pair}
    special = [c for c in ("(none)", "(other)") if c in names]
    return (*sorted(names - set(special), key=_class_key), *special)


def _class_key(name: str) -> tuple[int, float, str]:
    try:
        value = float(name)
    except ValueError:
        return (1, 0.0, name)
    return (0, value, name) if math.isfinite(value) else (1, 0.0, name)


# --- examples ------------------------------------------------------------------------


def add_examples(pairs: dict[Key, PairReport], runner: Runner, per_pair: int) -> None:
    examples: dict[Key, list[dict[str, Any]]] = {}
    for row in runner.rows(queries.top_disagreements(per_pair, runner.dialect)):
        ordered = sorted(row["examples"], key=lambda e: (-_score(e["diff_score"]), e["request_id"]))
        examples[(row["route"], row["shadow"])] = ordered
    wanted = [(r, s, e["request_id"]) for (r, s), items in examples.items() for e in items]
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    if wanted:
        for row in runner.rows(queries.bodies(wanted, runner.dialect)):
            found[(row["route"], row["shadow"], row["request_id"])] = row
    for key, items in examples.items():
        if key in pairs:
            pairs[key].examples = [
                _example(e, found.get((*key, e["request_id"]), {})) for e in items
            ]


def _score(value: float | None) -> float:
    return -math.inf if value is None else value


def _example(item: dict[str, Any], bodies: dict[str, Any]) -> Example:
    return Example(
        request_id=item["request_id"],
        ts=item["ts"],
        method=item["method"],
        path=item["path"],
        prod_prediction=item["prod_prediction"],
        shadow_prediction=item["shadow_prediction"],
        diff_score=item["diff_score"],
        detail=item["compare_detail"],
        request_body=body_preview(bodies.get("request_body")),
        prod_body=body_preview(bodies.get("prod_body")),
        shadow_body=body_preview(bodies.get("shadow_body")),
    )


def body_preview(body: bytes | None, limit: int = BODY_PREVIEW_CHARS) -> str:
    """Readable text of a recorded body: JSON re-indented, binary bytes replaced, cut at
    ``limit`` characters. Escaping is the renderer's job."""
    if not body:
        return ""
    text = bytes(body).decode("utf-8", errors="replace")
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    if len(text) > limit:
        return text[:limit] + f"\n... ({len(text) - limit} more characters)"
    return text


# --- segments ------------------------------------------------------------------------


def add_segments(pairs: dict[Key, PairReport], path: str, rows: Rows) -> None:
    grouped: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["route"], row["shadow"])].append(row)
    for key, items in grouped.items():
        if key in pairs:
            pairs[key].segments.extend(segment_tests(path, items))


def segment_tests(path: str, rows: Sequence[dict[str, Any]]) -> list[Segment]:
    """Each segment's agreement against the rest of the pair's rows (one-sided: is it
    worse?), Holm-corrected across the segments so that many segments do not make a
    spurious "worse" flag likely."""
    total_compared = sum(int(r["compared"]) for r in rows)
    total_agreed = sum(int(r["agreed"]) for r in rows)
    raw: list[float | None] = []
    for row in rows:
        compared, agreed = int(row["compared"]), int(row["agreed"])
        rest = total_compared - compared
        if compared and rest:
            test = stats.two_proportion_z(agreed, compared, total_agreed - agreed, rest, "less")
            raw.append(test.p_value)
        else:
            raw.append(None)
    tested = [p for p in raw if p is not None]
    adjusted = iter(stats.holm(tested))
    out = []
    for row, p in zip(rows, raw, strict=True):
        compared, agreed = int(row["compared"]), int(row["agreed"])
        p_adj = next(adjusted) if p is not None else None
        out.append(
            Segment(
                path=path,
                value=str(row["segment"]),
                rows=int(row["rows"]),
                compared=compared,
                agreed=agreed,
                rate=agreed / compared if compared else None,
                ci=Interval(*stats.wilson_interval(agreed, compared)) if compared else None,
                p_value=p,
                p_adjusted=p_adj,
                worse=p_adj is not None and p_adj < ALPHA,
            )
        )
    return out


# --- noise floor ---------------------------------------------------------------------


def add_noise_floors(pairs: Iterable[PairReport]) -> None:
    """Compare each candidate's disagreement with its route's baseline shadow(s): the
    disagreement two identical models show is the floor a candidate must exceed
    before its disagreement means anything. Several baselines are pooled."""
    by_route: dict[str, list[PairReport]] = defaultdict(list)
    for pair in pairs:
        by_route[pair.route].append(pair)
    for route_pairs in by_route.values():
        baselines = [p for p in route_pairs if p.role == "baseline" and p.compared]
        if not baselines:
            continue
        for pair in route_pairs:
            if pair.role != "baseline":
                pair.noise_floor = noise_floor(pair, baselines)


def noise_floor(candidate: PairReport, baselines: Sequence[PairReport]) -> NoiseFloor:
    compared = sum(b.compared for b in baselines)
    disagreed = sum(b.compared - b.agreed for b in baselines)
    rate = disagreed / compared
    test = mde = None
    if candidate.compared:
        own = candidate.compared - candidate.agreed
        test = stats.two_proportion_z(own, candidate.compared, disagreed, compared, "greater")
        mde = stats.mde_two_proportions(rate, candidate.compared, compared)
        mde = mde if math.isfinite(mde) else None
    return NoiseFloor(
        baselines=tuple(b.shadow for b in baselines),
        compared=compared,
        disagreed=disagreed,
        rate=rate,
        ci=Interval(*stats.wilson_interval(disagreed, compared)),
        test=test,
        mde=mde,
    )
