"""The report as one self-contained HTML file: inline CSS and SVG, no script, no
network. It reads on a laptop screen and prints (the print stylesheet keeps each
shadow's section together and drops the navigation). Every value that came from the
recording is escaped: request bodies are untrusted input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from html import escape

from shadowproxy import __version__
from shadowproxy.report import drift_output, svg
from shadowproxy.report.model import (
    OUTCOME_NAMES,
    ChaosCheck,
    Example,
    Experiment,
    ExperimentArm,
    Interval,
    Labels,
    PairReport,
    Report,
    Segment,
)
from shadowproxy.report.verdict import p_text

NA = "-"
"""Shown where there is no value (also in the terminal table, hence plain ASCII)."""

CSS = """
:root { --ink: #222; --muted: #666; --line: #ddd; --accent: #4c78a8; --bad: #d62728; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); margin: 0 auto; padding: 1.5rem; max-width: 1100px; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid var(--line); padding-bottom: .2rem;
     margin-top: 2rem; }
h3 { font-size: 1.1rem; margin: 1.5rem 0 .3rem; }
h4 { font-size: .95rem; margin: 1rem 0 .3rem; color: var(--muted); }
.meta, .note { color: var(--muted); font-size: .85rem; }
.verdict { background: #f4f7fb; border-left: 4px solid var(--accent); padding: .5rem .75rem; }
.warn { background: #fff4e5; border-left: 4px solid #f58518; padding: .5rem .75rem; }
table { border-collapse: collapse; margin: .3rem 0 .6rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: .2rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; }
.bad { color: var(--bad); font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr));
          gap: .75rem; }
figure { margin: 0; }
figcaption { font-size: .8rem; color: var(--muted); }
svg.chart { width: 100%; max-width: 680px; height: auto; }
nav td:nth-child(-n+3), nav th:nth-child(-n+3), nav td:last-child, nav th:last-child {
  text-align: left; }
pre { background: #f7f7f7; padding: .5rem; overflow: auto; max-height: 18rem;
      white-space: pre-wrap; word-break: break-all; font-size: .8rem; }
details { margin: .25rem 0; }
nav ul { columns: 2; }
.pair { border-top: 1px solid var(--line); padding-top: .5rem; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav { display: none; }
  .pair { break-before: page; }
  figure, table, .verdict { break-inside: avoid; }
  pre { max-height: none; }
  .charts { grid-template-columns: 1fr 1fr; }
}
"""


def render(report: Report) -> str:
    body = [
        _header(report),
        _overview(report),
        *(_pair_section(pair, report) for pair in report.pairs),
        _chaos(report),
        _experiments(report),
        drift_output.render(report.drift) if report.drift is not None else "",
        _methods(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>shadowproxy report — {escape(report.root)}</title>"
        f"<style>{CSS}</style></head><body>" + "".join(body) + "</body></html>\n"
    )


# --- formatting ----------------------------------------------------------------------


def pct(value: float | None, digits: int = 1) -> str:
    return NA if value is None or math.isnan(value) else f"{100 * value:.{digits}f}%"


def interval(ci: Interval | None, scale: float = 100.0, digits: int = 1) -> str:
    if ci is None or math.isnan(ci.lo):
        return ""
    return f"[{ci.lo * scale:.{digits}f}, {ci.hi * scale:.{digits}f}]"


def ms(value: float | None) -> str:
    return NA if value is None else f"{value:,.1f} ms"


def _anchor(pair: PairReport) -> str:
    return escape(f"pair-{pair.route}-{pair.shadow}".replace(" ", "_"))


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table from already-escaped cell HTML."""
    header = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>"


# --- page parts ----------------------------------------------------------------------


def _header(report: Report) -> str:
    filters = ", ".join(f"{k}={v}" for k, v in report.filters.items() if v) or "none"
    generated = report.generated_at.isoformat(timespec="seconds")
    parts = [
        "<header><h1>Shadow traffic report</h1>",
        (
            f'<p class="meta">Recording <code>{escape(report.root)}</code> · filters: '
            f"{escape(filters)} · generated {escape(generated)} "
            f"by shadowproxy {escape(__version__)}</p>"
        ),
    ]
    if report.skipped_files:
        items = "".join(
            f"<li><code>{escape(path)}</code>: {escape(reason)}</li>"
            for path, reason in report.skipped_files
        )
        parts.append(
            f'<div class="warn">Skipped {len(report.skipped_files)} unreadable file(s) '
            "(--skip-bad-files); their rows are missing from every number below."
            f"<ul>{items}</ul></div>"
        )
    parts.append("</header>")
    return "".join(parts)


def _overview(report: Report) -> str:
    rows = [
        (
            f'<a href="#{_anchor(p)}">{escape(p.route)}</a>',
            escape(p.shadow),
            escape(p.role),
            f"{p.rows:,}",
            f"{pct(p.agreement_rate)} {interval(p.agreement_ci)}",
            f'<span class="text">{escape(p.verdict)}</span>',
        )
        for p in report.pairs
    ]
    table = _table(("route", "shadow", "role", "rows", "agreement [95% CI]", "verdict"), rows)
    return f"<nav><h2>Verdicts</h2>{table}</nav>"


def _pair_section(pair: PairReport, report: Report) -> str:
    parts = [
        f'<section class="pair" id="{_anchor(pair)}">',
        (
            f'<h3>{escape(pair.shadow)} <span class="meta">({escape(pair.role)}) on route '
            f"{escape(pair.route)}</span></h3>"
        ),
        f'<p class="verdict">{escape(pair.verdict)}</p>',
        _volume(pair),
        _agreement(pair, report),
        _noise(pair),
        _latency(pair),
        _examples(pair),
        _segments(pair),
        _labels(pair.labels),
        "</section>",
    ]
    return "".join(parts)


def _volume(pair: PairReport) -> str:
    outcomes = _table(
        ("rows", *OUTCOME_NAMES),
        [
            (
                f"{pair.rows:,}",
                *(
                    f"{pair.outcomes[o]:,} ({pct(pair.outcomes[o] / pair.rows)})"
                    for o in OUTCOME_NAMES
                ),
            )
        ],
    )
    http = _table(
        ("", "production", "shadow"),
        [
            ("HTTP 5xx rate", pct(pair.prod_5xx_rate, 2), pct(pair.shadow_5xx_rate, 2)),
            ("status differs from production", "", f"{pair.status_mismatch:,}"),
        ],
    )
    excluded = ""
    if pair.chaos_excluded:
        excluded = (
            f'<p class="note">{pair.chaos_excluded:,} more rows carry injected faults and are '
            'left out of every figure of this shadow (see <a href="#chaos">Chaos '
            "experiments</a>).</p>"
        )
    return f"<h4>1. Volume and outcomes</h4>{outcomes}{http}{excluded}"


def _agreement(pair: PairReport, report: Report) -> str:
    text = (
        f"<p>Agreement {pct(pair.agreement_rate)} {interval(pair.agreement_ci)} over "
        f"{pair.compared:,} compared pairs (comparator <code>{escape(pair.comparator or NA)}"
        "</code>; rows without a comparable answer are left out).</p>"
    )
    reference = 1.0 - pair.noise_floor.rate if pair.noise_floor else None
    charts = [
        _figure(
            svg.rate_over_time(
                f"Agreement over time, {pair.shadow}",
                [(t.start, t.rate, t.ci.lo, t.ci.hi) for t in pair.timeline],
                reference,
            ),
            f"Agreement per {_duration(report.bucket_seconds)} with its 95% Wilson band"
            + ("; dashed: the baseline's agreement (noise floor)" if reference else ""),
        )
    ]
    if pair.diff_histogram:
        bins = [(b.lo, b.hi, b.count) for b in pair.diff_histogram]
        charts.append(
            _figure(
                svg.histogram(f"diff_score, {pair.shadow}", bins, "diff_score"),
                "diff_score of compared pairs (0 = identical); the last bar holds the top 1%",
            )
        )
    if pair.confusion is not None:
        charts.append(
            _figure(
                svg.heatmap(
                    f"Confusion, {pair.shadow}", pair.confusion.classes, pair.confusion.cells
                ),
                "Rows: production's class, columns: the shadow's; shade = share of the row",
            )
        )
    return f'<h4>2. Agreement</h4>{text}<div class="charts">{"".join(charts)}</div>'


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds} s"


def _noise(pair: PairReport) -> str:
    floor = pair.noise_floor
    if floor is None:
        return ""
    disagreement = 1.0 - pair.agreement_rate if pair.agreement_rate is not None else None
    rows = [
        (escape(pair.shadow), pct(disagreement, 2), f"{pair.compared:,}"),
        (
            escape(", ".join(floor.baselines)) + " (baseline)",
            pct(floor.rate, 2),
            f"{floor.compared:,}",
        ),
    ]
    test = floor.test
    sentence = ""
    if test is not None:
        significant = test.p_value < 0.05
        sentence = (
            f"<p>Excess disagreement over the noise floor: "
            f"{'significant' if significant else 'not significant'} "
            f"(one-sided two-proportion z = {test.statistic:.2f}, {p_text(test.p_value)}). "
            f"Smallest excess detectable with these rows at 80% power: {pct(floor.mde, 2)}.</p>"
        )
    return "<h4>3. Noise floor</h4>" + _table(("", "disagreement", "compared"), rows) + sentence


def _latency(pair: PairReport) -> str:
    lat = pair.latency
    table = _table(
        ("", "p50", "p95", "p99"),
        [
            ("production", ms(lat.production.p50), ms(lat.production.p95), ms(lat.production.p99)),
            ("shadow", ms(lat.shadow.p50), ms(lat.shadow.p95), ms(lat.shadow.p99)),
        ],
    )
    test = "<p>Too few requests answered by both sides for a paired test.</p>"
    if lat.test is not None:
        ci = lat.median_diff_ci
        ci_text = f" [{ci.lo:+.2f}, {ci.hi:+.2f}]" if ci is not None else ""
        test = (
            f"<p>Per-request difference (shadow &minus; production), median "
            f"{lat.median_diff or 0.0:+.2f} ms{ci_text} (bootstrap 95% CI); Wilcoxon signed-rank "
            f"{p_text(lat.test.p_value)} on a hash sample of {lat.sample:,} of "
            f"{lat.pairs:,} requests both answered.</p>"
        )
    chart = svg.overlaid_histograms(
        f"Latency, {pair.shadow}",
        [
            ("production", svg.PROD, [(b.lo, b.hi, b.count) for b in lat.production_hist]),
            ("shadow", svg.SHADOW, [(b.lo, b.hi, b.count) for b in lat.shadow_hist]),
        ],
        "ms (log scale)",
    )
    figure = _figure(chart, "Latency distributions on requests both sides answered")
    return f'<h4>4. Latency</h4>{table}{test}<div class="charts">{figure}</div>'


def _examples(pair: PairReport) -> str:
    if not pair.examples:
        return "<h4>5. Examples</h4><p>No disagreeing requests.</p>"
    items = "".join(_example(e) for e in pair.examples)
    return f"<h4>5. Top disagreements</h4>{items}"


def _example(example: Example) -> str:
    diff = NA if example.diff_score is None else f"{example.diff_score:.4g}"
    when = example.ts.isoformat(timespec="seconds") if example.ts else ""
    summary = (
        f"<code>{escape(example.request_id)}</code> {escape(example.method or '')} "
        f"{escape(example.path or '')} · production "
        f"<code>{escape(_cut(example.prod_prediction))}</code>"
        f" · shadow <code>{escape(_cut(example.shadow_prediction))}</code> · diff {diff}"
    )
    bodies = "".join(
        f'<p class="note">{title}</p><pre>{escape(text)}</pre>'
        for title, text in (
            ("request", example.request_body),
            ("production answer", example.prod_body),
            ("shadow answer", example.shadow_body),
        )
        if text
    )
    detail = f'<p class="note">{escape(example.detail)}</p>' if example.detail else ""
    return (
        f'<details><summary>{summary}</summary><p class="note">{escape(when)}</p>'
        f"{detail}{bodies}</details>"
    )


def _cut(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "null"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _segments(pair: PairReport) -> str:
    if not pair.segments:
        return ""
    parts = ["<h4>6. Segments</h4>"]
    for path in dict.fromkeys(s.path for s in pair.segments):
        segments = [s for s in pair.segments if s.path == path]
        parts.append(_segment_block(path, segments, pair.agreement_rate))
    return "".join(parts)


def _segment_block(path: str, segments: list[Segment], overall: float | None) -> str:
    rows = [
        (
            f'<span class="{"bad" if s.worse else ""}">{escape(s.value)}</span>',
            f"{s.rows:,}",
            f"{pct(s.rate)} {interval(s.ci)}",
            p_text(s.p_adjusted) if s.p_adjusted is not None else NA,
            "worse" if s.worse else "",
        )
        for s in segments
    ]
    items = [
        (s.value, s.rate, s.ci.lo, s.ci.hi, s.worse)
        for s in segments
        if s.rate is not None and s.ci is not None
    ]
    chart = svg.rate_bars(f"Agreement by {path}", items, overall)
    return (
        f"<p>By <code>{escape(path)}</code> (top segments by volume):</p>"
        + _table(("segment", "rows", "agreement [95% CI]", "Holm-adjusted p", ""), rows)
        + _figure(
            chart,
            "Agreement per segment with 95% intervals; red: significantly worse "
            "than the rest (one-sided, Holm-corrected); dashed: overall",
        )
    )


def _labels(labels: Labels | None) -> str:
    if labels is None:
        return ""
    if labels.task == "classification":
        rows = [
            (name, f"{pct(_num(side['accuracy']), 2)} {_ci_text(side['accuracy_ci95'])}")
            for name, side in (("production", labels.production), ("shadow", labels.shadow))
        ]
        table = _table(("", "accuracy [95% CI]"), rows)
        diff = f"{100 * labels.difference:+.2f} pts {interval(labels.difference_ci, digits=2)}"
        mde = f"{100 * labels.mde:.2f} pts" if labels.mde is not None else NA
    else:
        errors = [
            (name, f"{_num(side['mae']):.4g}", f"{_num(side['rmse']):.4g}")
            for name, side in (("production", labels.production), ("shadow", labels.shadow))
        ]
        table = _table(("", "MAE", "RMSE"), errors)
        diff = f"MAE {labels.difference:+.4g} {interval(labels.difference_ci, 1.0, 4)}"
        mde = f"{labels.mde:.4g}" if labels.mde is not None else NA
    more = (
        f" About {labels.more_labels_needed:,} more labels would detect a difference of the "
        "observed size."
        if labels.more_labels_needed
        else ""
    )
    text = (
        f"<p>{labels.n:,} labeled requests ({escape(labels.task)}). "
        f"Shadow &minus; production: {diff}; "
        f"{escape(labels.test.name)} {p_text(labels.test.p_value)}. Minimum detectable "
        f"difference at 80% power: {mde}.{more}</p>"
    )
    return f"<h4>7. Ground truth</h4>{table}{text}"


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _ci_text(value: object) -> str:
    if isinstance(value, list) and len(value) == 2:
        return interval(Interval(float(value[0]), float(value[1])), digits=2)
    return ""


def _chaos(report: Report) -> str:
    if not report.chaos:
        return ""
    rows = [
        (
            escape(check.route),
            escape(check.target),
            escape(fault_text(check)),
            f"{check.rows:,}",
            escape(check.measure),
            chaos_value(check, check.injected),
            chaos_value(check, check.clean),
            chaos_value(check, check.expected),
            {True: "yes", False: '<span class="bad">no</span>', None: NA}[check.noticed],
        )
        for check in report.chaos
    ]
    head = (
        "route", "target", "fault", "injected rows", "measure", "injected",
        "without faults", "expected", "noticed",
    )  # fmt: skip
    return (
        '<section id="chaos"><h2>Chaos experiments</h2><p>Faults injected on purpose by the '
        "routes' <code>chaos</code> rules. Rows that carry one are left out of every other "
        "figure in this report. <i>Noticed</i>: the measure moved at least halfway from the "
        "rows without faults to the value the fault should produce.</p>"
        f"{_table(head, rows)}</section>"
    )


def fault_text(check: ChaosCheck) -> str:
    """``delay 500 ms``, ``abort 503``, ``corrupt``."""
    if check.parameter is None:
        return check.fault
    if check.fault == "delay":
        return f"delay {check.parameter:g} ms"
    return f"{check.fault} {check.parameter:g}"


def chaos_value(check: ChaosCheck, value: float | None) -> str:
    return ms(value) if check.fault == "delay" else pct(value)


def _experiments(report: Report) -> str:
    if not report.experiments:
        return ""
    parts = [
        (
            '<section id="experiments"><h2>Experiments</h2><p>Per experiment route: each '
            "arm's requests (exposures without injected faults) and the outcomes posted to "
            "<code>/feedback</code> for them, compared with the control; per user when "
            "assignment is sticky by a key (a user's outcome is the mean over their "
            "requests), else per request; the split checked against the configured shares "
            "(sample ratio mismatch at p &lt; 0.001); the sample size that detects the "
            "planned effect at 80% power.</p>"
        )
    ]
    for trial in report.experiments:
        parts.append(f"<h3>{escape(experiment_title(trial))}</h3>")
        parts.extend(f'<div class="warn"><b>{escape(w)}</b></div>' for w in trial.warnings)
        rows = [[escape(cell) for cell in arm_row(trial, arm)] for arm in trial.arms]
        parts.append(_table(arm_columns(trial), rows))
        parts.extend(f'<p class="note">{escape(line)}</p>' for line in experiment_lines(trial))
    parts.append("</section>")
    return "".join(parts)


UNIT_TEXT = {
    "user": "per user (hashed assignment key)",
    "request": "per request (random assignment)",
}


def experiment_title(trial: Experiment) -> str:
    """``rank (ab, binary, per user)``."""
    return f"{trial.route} ({trial.design}, {trial.kind or 'no outcomes'}, per {trial.unit})"


def arm_columns(trial: Experiment) -> tuple[str, ...]:
    counts = ("exposed",) if trial.unit == "request" else ("requests", "users")
    return ("arm", *counts, "with outcome", "mean [95% CI]", "vs control [95% CI]", "p")


def arm_row(trial: Experiment, arm: ExperimentArm) -> list[str]:
    scale, digits = (100.0, 2) if trial.kind == "binary" else (1.0, 3)
    mean = NA if arm.mean is None else f"{arm.mean * scale:.{digits}f}"
    if arm.name == trial.control:
        versus = "control"
    elif arm.difference is None:
        versus = NA
    else:
        versus = (
            f"{arm.difference * scale:+.{digits}f} {interval(arm.difference_ci, scale, digits)}"
        )
    unit = "%" if trial.kind == "binary" and arm.mean is not None else ""
    requests = [] if trial.unit == "request" else [f"{arm.requests:,}"]
    return [
        arm.name,
        *requests,
        f"{arm.exposed:,}",
        f"{arm.with_outcome:,}",
        f"{mean}{unit} {interval(arm.ci, scale, digits)}".strip(),
        versus,
        NA if arm.p_value is None else p_text(arm.p_value),
    ]


def experiment_lines(trial: Experiment) -> list[str]:
    """The unit, the test, the split check and the power figures, one sentence each."""
    lines = [unit_line(trial)]
    if trial.test is not None:
        extra = ""
        superiority = getattr(trial.test, "superiority", None)
        if superiority is not None:
            extra = f", P(treatment > control) = {superiority:.3f}"
        lines.append(
            f"test: {trial.test.name} statistic {trial.test.statistic:.3f}, "
            f"{p_text(trial.test.p_value)}{extra}"
        )
    srm = trial.srm
    observed = ", ".join(f"{arm} {n:,}" for arm, n in srm.observed.items())
    shares = ", ".join(f"{arm} {share:.1%}" for arm, share in srm.expected_shares.items())
    verdict = {True: "MISMATCH", False: "passes", None: "not tested"}[srm.mismatch]
    p = f", {p_text(srm.test.p_value)}" if srm.test is not None else ""
    note = f" ({srm.note})" if srm.note else ""
    lines.append(
        f"sample ratio ({trial.unit}s): {observed} vs configured {shares}{p}: {verdict}{note}"
    )
    power = trial.power
    needed = NA if power.n_needed_per_arm is None else f"{power.n_needed_per_arm:,}"
    per_arm = "outcomes" if trial.unit == "request" else "users with an outcome"
    lines.append(
        f"power: {needed} {per_arm} per arm detect a {power.mde_relative:.1%} relative effect "
        f"(alpha 0.05, 80% power); the current arms detect {pct(power.mde_at_current_n)}"
    )
    if trial.ignored:
        lines.append(f"{trial.ignored:,} feedback values were not numbers or booleans: ignored")
    return lines


def unit_line(trial: Experiment) -> str:
    """What one observation is, and the users left out for being in several arms."""
    text = f"unit of analysis: {UNIT_TEXT[trial.unit]}"
    if trial.unit == "request":
        return f"{text}: the exposures name no assignment key"
    text += ": each user counts once, with the mean of their requests' outcomes"
    several = trial.units_in_several_arms
    if several:
        text += f"; {several:,} user{'s' if several != 1 else ''} seen in several arms left out"
    return text


def _methods(report: Report) -> str:
    return """<h2>How to read this report</h2><div class="note">
<p><b>Agreement</b> is the share of compared pairs (both sides answered and the comparator
could judge them) on which the comparator said "agree", with a 95% Wilson interval.</p>
<p><b>Noise floor</b>: a <i>baseline</i> shadow runs the production model again; its
disagreement is what non-determinism alone produces. A candidate's excess over it is
tested with a one-sided two-proportion z test.</p>
<p><b>Latency</b> percentiles are approximate (t-digest) over requests both sides answered;
the paired test is a Wilcoxon signed-rank test (normal approximation, ties corrected) on a
deterministic hash sample of per-request differences (its size is given per shadow), with a
percentile-bootstrap interval for the median difference.</p>
<p><b>Segments</b> compare each segment's agreement with the rest of the pair's rows
(one-sided two-proportion z test), Holm-corrected across the segments of a pair.</p>
<p><b>Ground truth</b>: accuracy is compared with an exact McNemar test on the labeled
requests both models answered; regression errors with a Wilcoxon signed-rank test on
paired absolute errors and a bootstrap interval of the MAE difference. The minimum
detectable difference assumes 80% power at &alpha; = 0.05.</p></div>"""
