"""``shadowproxy report``: what the shadows did, with the statistics to trust it.

How the report is made::

    ROOT/pairs/route=R/date=D/*.parquet ─────┐   load: discover files, check footers
    ROOT/exposures/route=R/date=D/*.parquet ─┤   engines: views in DuckDB (embedded,
    ROOT/feedback/date=D/*.parquet ──────────┤         memory-limited, spilling) or
    --labels FILE ───────────────────────────┘         Spark (--engine spark)
            │  queries: every aggregation as SQL, one streaming scan each, written
            │           once and rendered per engine by dialect; only aggregates
            │           and capped hash samples reach Python
            ▼
    analysis (+ groundtruth, chaos,  ──► stats, intervals (pure: Wilson, z, McNemar,
            │                                    bootstrap, Holm, power)
            │  experiments)
            │  ──► verdict (pure: one line per shadow, no claim beyond its test)
            ▼
    model.Report ──► render (HTML + svg charts) · summary (summary.json) · table (stdout)

Nothing in the proxy imports this package: the CLI imports it lazily, so DuckDB and
rich stay optional (the ``report`` extra), and pyspark too (the ``spark`` extra).
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadowproxy.report.model import Report
from shadowproxy.report.options import (
    CorruptFileError,
    Filters,
    ReportInputError,
    ReportOptions,
    parse_mde,
    parse_segment,
    parse_time,
)

if TYPE_CHECKING:
    from shadowproxy.report.engines import Engine
    from shadowproxy.report.load import Dataset

__all__ = [
    "CorruptFileError",
    "Filters",
    "ReportInputError",
    "ReportOptions",
    "build_report",
    "parse_mde",
    "parse_segment",
    "parse_time",
    "run_report",
]

MAX_RETRIES = 20
"""How many corrupt files ``--skip-bad-files`` will step over before giving up."""


def run_report(options: ReportOptions, *, now: datetime | None = None) -> int:
    """Build the report, write the requested files and print the summary table; the exit
    status is 0, or with ``gate`` the worst candidate's decision (0 PROMOTE, 3 HOLD,
    4 REJECT). Raises :class:`ReportInputError` on bad input (the CLI exits 2)."""
    from shadowproxy.report import decision, render, summary, table

    report = build_report(options, now=now or datetime.now(UTC))
    if options.out:
        _write(options.out, render.render(report))
    if options.json_out:
        _write(options.json_out, summary.dumps(report))
    table.print_summary(report)
    if report.drift is not None:
        from shadowproxy.report import drift_output

        print(drift_output.summary_lines(report.drift))
    if not options.gate:
        return 0
    status = decision.worst(p.decision.status for p in report.pairs if p.decision)
    if status is None:
        raise ReportInputError("--gate: no candidate shadow in the recording to decide on")
    return decision.EXIT_CODES[status]


def build_report(options: ReportOptions, *, now: datetime, progress: bool | None = None) -> Report:
    """The report, stepping over corrupt files when ``skip_bad_files`` is set."""
    from shadowproxy.report import analysis, engines, load, table

    dataset = load.discover(options.root)
    skipped = _bad_footers(dataset, options)
    for _attempt in range(MAX_RETRIES):
        pairs = [f for f in dataset.pair_files if f not in skipped]
        feedback = [f for f in dataset.feedback_files if f not in skipped]
        exposures = [f for f in dataset.exposure_files if f not in skipped]
        if dataset.pair_files and not pairs:
            raise ReportInputError(f"every Parquet file under {options.root}/pairs is unreadable")
        try:
            with (
                engines.open_engine(options) as engine,
                table.progress(_steps(options), progress) as step,
            ):
                engine.attach_pairs(dataset, pairs, options)
                has_labels = engine.attach_labels(dataset, feedback, options.labels)
                has_exposures = engine.attach_exposures(dataset, exposures, options)
                runner = engine.runner(dataset, [*pairs, *feedback, *exposures], step)
                report = analysis.analyze(
                    runner,
                    options,
                    has_labels=has_labels,
                    now=now,
                    has_exposures=has_exposures,
                    # Routes that only watch production record telemetry and no pairs.
                    has_telemetry=bool(dataset.telemetry_files and options.monitors),
                )
                readable = tuple(f for f in dataset.telemetry_files if f not in skipped)
                report.drift = _drift(
                    engine, dataclasses.replace(dataset, telemetry_files=readable), pairs, options
                )
        except CorruptFileError as exc:
            if not options.skip_bad_files:
                raise
            skipped[exc.path] = exc.reason
            continue
        report.skipped_files = sorted(skipped.items())
        add_canaries(report, options)
        return report
    raise ReportInputError(f"gave up after skipping {len(skipped)} corrupt files")


def add_canaries(report: Report, options: ReportOptions) -> None:
    """The canary routes' recorded decisions (``--config``); a route whose state file is
    not there yet is said so."""
    from shadowproxy.report import canary

    for route, path in options.canary_states:
        found = canary.read(route, path)
        if found is None:
            report.warnings.append(f"canary {route}: no recorded decisions at {path}")
        else:
            report.canaries.append(found)


def _drift(engine: Engine, dataset: Dataset, pairs: list[str], options: ReportOptions) -> Any:
    """The Drift section, or why there is none. It reads the recording with DuckDB on
    this machine whichever the engine: its reservoir sample of watched answers is
    DuckDB's."""
    from shadowproxy.report import drift

    if options.monitors is None:
        return drift.DriftSection(
            note="No --config given: the routes' monitor: blocks say what to watch, so "
            "there is no Drift section. Run with --config FILE (the proxy's main file)."
        )
    if not options.monitors:
        return drift.DriftSection(note=f"No route in {options.config} has a monitor: block.")
    with engine.drift_connection(dataset, pairs, options) as connection:
        return drift.build(connection, dataset, options, options.monitors)


def _bad_footers(dataset: Dataset, options: ReportOptions) -> dict[str, str]:
    from shadowproxy.report import load

    files = [
        *dataset.pair_files,
        *dataset.feedback_files,
        *dataset.exposure_files,
        *dataset.telemetry_files,
    ]
    bad = load.check_footers(dataset, files)
    if bad and not options.skip_bad_files:
        raise bad[0]
    return {error.path: error.reason for error in bad}


def _steps(options: ReportOptions) -> int:
    return 15 + len(options.segments) + (2 if options.labels else 0)


def _write(path: str, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
