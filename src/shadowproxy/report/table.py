"""Terminal output: the summary table on stdout (always) and a progress bar on stderr
(only when stderr is a terminal, so logs and pipes stay clean)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from shadowproxy.report.decision import criterion_text
from shadowproxy.report.formatting import interval, pct
from shadowproxy.report.model import CanaryHistory, ChaosCheck, Experiment, PairReport, Report
from shadowproxy.report.render import ordered
from shadowproxy.report.run_sections import (
    arm_columns,
    arm_row,
    chaos_value,
    experiment_lines,
    experiment_title,
    fault_text,
    guardrail_text,
)

TABLE_WIDTH = 100
"""The summary table fits this many columns (cells wrap inside it); the verdict and
decision lines stay one line each, so a pipeline can grep them."""


def print_summary(report: Report, out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    console = Console(file=stream, width=_width(stream), highlight=False)
    console.print(f"shadowproxy report: {report.root}", soft_wrap=True, markup=False)
    for warning in report.warnings:
        console.print(f"WARNING: {warning}", style="bold red", soft_wrap=True, markup=False)
    if report.pairs:  # a recording of experiments without shadows has none
        console.print(summary_table(report))
    for pair in ordered(report.pairs):
        console.print(f"{pair.route} / {pair.verdict}", soft_wrap=True, markup=False)
    for check in report.chaos:
        console.print(chaos_line(check), soft_wrap=True, markup=False)
    for trial in report.experiments:
        print_experiment(console, trial)
    for history in report.canaries:
        for line in canary_lines(history):
            console.print(line, soft_wrap=True, markup=False)
    for path, reason in report.skipped_files:
        console.print(f"skipped unreadable file {path}: {reason}", soft_wrap=True, markup=False)
    for pair in report.pairs:
        for criterion in pair.decision.criteria if pair.decision else ():
            text = criterion_text(criterion, detail=True)
            console.print(f"criterion {pair.route} / {pair.shadow}: {text}", soft_wrap=True,
                          markup=False)  # fmt: skip
    for line in decision_lines(report):
        console.print(line, soft_wrap=True, markup=False)


def _width(stream: TextIO) -> int:
    """At most ``TABLE_WIDTH``, less on a narrower terminal."""
    if stream.isatty():
        return min(TABLE_WIDTH, Console(file=stream).width)
    return TABLE_WIDTH


def decision_lines(report: Report) -> list[str]:
    """One line per candidate, printed last: what a CD pipeline greps.
    ``decision churn / candidate: HOLD: not enough evidence yet: accuracy needs ...``"""
    return [
        f"decision {p.route} / {p.shadow}: {p.decision.sentence}"
        for p in report.pairs
        if p.decision is not None
    ]


def summary_table(report: Report) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (
        ("route / shadow", "left"),
        ("rows", "right"),
        ("agreement [95% CI]", "right"),
        ("floor", "right"),
        ("labels: Δ", "right"),
        ("p99 ms", "right"),
        ("decision", "left"),
    ):
        # Only the names wrap: a number split over two lines misreads.
        table.add_column(name, justify=justify, no_wrap=name != "route / shadow")  # type: ignore[arg-type]
    for pair in ordered(report.pairs):
        table.add_row(*_row(pair))
    return table


def _row(pair: PairReport) -> list[str]:
    lat = pair.latency
    name = f"{pair.route} / {pair.shadow}"
    p99 = "no answered requests"
    if lat.production.p99 is not None and lat.shadow.p99 is not None:
        p99 = f"{lat.production.p99:,.1f} → {lat.shadow.p99:,.1f}"
    return [
        name,
        f"{pair.rows:,}",
        f"{pct(pair.agreement_rate)} {interval(pair.agreement_ci)}",
        _floor(pair),
        _labels(pair),
        p99,
        pair.decision.status if pair.decision else "baseline",
    ]


def canary_lines(history: CanaryHistory) -> list[str]:
    """``canary price: 2024-05-01 06:00:12 advance by auto 1% -> 5% (running): ...``"""
    lines = [
        f"canary {history.route}: {history.candidate} {history.status} at {history.percent:g}%"
    ]
    for step in history.steps:
        lines.append(
            f"canary {history.route}: {step.at:%Y-%m-%d %H:%M:%S} {step.action} by {step.by} "
            f"{step.from_percent:g}% -> {step.percent:g}% ({step.status}): "
            + "; ".join(guardrail_text(g) for g in step.guardrails)
        )
    return lines


def _floor(pair: PairReport) -> str:
    if pair.role == "baseline":
        return "(itself)"
    return pct(pair.noise_floor.rate) if pair.noise_floor else "none"


def chaos_line(check: ChaosCheck) -> str:
    """``chaos m / s: delay 500 ms on 20 rows: median latency 612.0 ms vs 101.0 ms
    without faults (expected 601.0 ms): noticed``"""
    verdict = {True: "noticed", False: "NOT noticed", None: "cannot tell"}[check.noticed]
    unit = "requests" if check.target == "production" else "rows"
    return (
        f"chaos {check.route} / {check.target}: {fault_text(check)} on {check.rows:,} {unit}: "
        f"{check.measure} {chaos_value(check, check.injected)} vs "
        f"{chaos_value(check, check.clean)} without faults "
        f"(expected {chaos_value(check, check.expected)}): {verdict}"
    )


def print_experiment(console: Console, trial: Experiment) -> None:
    """An experiment: warnings first, in bold red (they decide whether to read on)."""
    console.print(f"experiment {experiment_title(trial)}", soft_wrap=True, markup=False)
    for warning in trial.warnings:
        console.print(f"WARNING: {warning}", style="bold red", soft_wrap=True, markup=False)
    table = Table()
    for name in arm_columns(trial):
        table.add_column(name, justify="left" if name == "arm" else "right")
    for arm in trial.arms:
        table.add_row(*arm_row(trial, arm))
    console.print(table)
    for line in experiment_lines(trial):
        console.print(line, soft_wrap=True, markup=False)


def _labels(pair: PairReport) -> str:
    labels = pair.labels
    if labels is None:
        return "no labels"
    if labels.task == "classification":
        return f"{labels.n:,}: {100 * labels.difference:+.1f} pts"
    return f"{labels.n:,}: MAE {labels.difference:+.3g}"


@contextmanager
def progress(total: int, enabled: bool | None = None) -> Iterator[Callable[[str], None]]:
    """A callback advancing a transient progress bar, one step per query."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda _name: None
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    )
    with bar:
        task = bar.add_task("scanning", total=total)
        started = False

        def step(name: str) -> None:
            nonlocal started
            if started:
                bar.advance(task)
            started = True
            bar.update(task, description=f"scanning: {name}")

        yield step
