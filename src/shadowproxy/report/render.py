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
from shadowproxy.report import svg
from shadowproxy.report.decision import open_text, value_text
from shadowproxy.report.model import (
    OUTCOME_NAMES,
    CanaryStep,
    ChaosCheck,
    Criterion,
    Example,
    Experiment,
    ExperimentArm,
    GuardrailFigure,
    Interval,
    Labels,
    PairReport,
    Report,
    Segment,
)
from shadowproxy.report.verdict import p_text

NA = "n/a (no data)"
"""Shown where a figure is undefined and nothing more specific is known; places that know
why say so instead (plain ASCII: the terminal table uses it too)."""

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
.card { border: 1px solid var(--line); border-left: 8px solid var(--muted); padding: .4rem .8rem;
        margin: .5rem 0; }
.card.PROMOTE { border-left-color: #2ca02c; } .card.HOLD { border-left-color: #f58518; }
.card.REJECT { border-left-color: var(--bad); }
.card h3 { margin: .1rem 0; } .card table { font-size: .85rem; }
.status { font-weight: 700; } .PROMOTE .status { color: #1d7a1d; }
.HOLD .status { color: #b35c00; } .REJECT .status { color: var(--bad); }
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
        _decisions(report),
        _overview(report),
        *(_pair_section(pair, report) for pair in ordered(report.pairs)),
        _chaos(report),
        _canaries(report),
        _experiments(report),
        _methods(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title(report))} — {escape(report.root)}</title>"
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
    return "n/a (no answered requests)" if value is None else f"{value:,.1f} ms"


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
        f"<header><h1>{escape(title(report))}</h1>",
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
    parts.extend(f'<div class="warn"><b>{escape(w)}</b></div>' for w in report.warnings)
    parts.append("</header>")
    return "".join(parts)


def title(report: Report) -> str:
    """What the report holds: shadow pairs, experiments (A/B, canary), or both."""
    kinds = []
    if report.pairs:
        kinds.append("Shadow traffic")
    designs = sorted({e.design for e in report.experiments} | {"canary" for _ in report.canaries})
    if designs:
        names = {"ab": "A/B test", "canary": "canary"}
        kinds.append(" and ".join(names.get(d, d) for d in designs))
    return (" and ".join(kinds) or "Empty") + " report"


def ordered(pairs: list[PairReport]) -> list[PairReport]:
    """Candidates before baselines, each group in report order (by route, shadow)."""
    return sorted(pairs, key=lambda p: p.role == "baseline")


def _decisions(report: Report) -> str:
    """A card per candidate, first thing on the page: the status, one sentence, and each
    criterion with its estimate, bounds, test and margin."""
    cards = [_card(p) for p in report.pairs if p.decision is not None]
    if not cards:
        return ""
    return '<section id="decisions"><h2>Decisions</h2>' + "".join(cards) + "</section>"


def _card(pair: PairReport) -> str:
    decision = pair.decision
    assert decision is not None
    rows = [
        (
            escape(c.name),
            escape(value_text(c.name, c.estimate)),
            escape(_bounds_text(c)),
            escape(value_text(c.name, c.margin)),
            escape(p_text(c.p_value) if c.p_value is not None else "no test: no data"),
            f'<span class="{"bad" if c.result == "fail" else ""}">{escape(_result_text(c))}</span>',
            f'<span class="text">{escape(c.test)}</span>',
        )
        for c in decision.criteria
    ]
    table = _table(
        ("criterion", "estimate", "one-sided 95% bounds", "margin", "p (non-inferiority)",
         "result", "test"),
        rows,
    )  # fmt: skip
    return (
        f'<div class="card {escape(decision.status)}"><h3><span class="status">'
        f"{escape(decision.status)}</span> {escape(pair.shadow)} "
        f'<span class="meta">on route {escape(pair.route)}</span></h3>'
        f"<p>{escape(decision.sentence)}</p>{table}</div>"
    )


def _bounds_text(c: Criterion) -> str:
    if c.interval is None:
        return "undefined: no data"
    return f"{value_text(c.name, c.interval.lo)} .. {value_text(c.name, c.interval.hi)}"


def _result_text(c: Criterion) -> str:
    if c.result != "open":
        return c.result
    return "open: " + open_text(c).split(" ", 1)[1]


def _overview(report: Report) -> str:
    if not report.pairs:
        return ""
    rows = [
        (
            f'<a href="#{_anchor(p)}">{escape(p.route)}</a>',
            escape(p.shadow),
            escape(p.role),
            f"{p.rows:,}",
            f"{pct(p.agreement_rate)} {interval(p.agreement_ci)}",
            f'<span class="text">{escape(p.verdict)}</span>',
        )
        for p in ordered(report.pairs)
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
        *numbered(
            [
                _volume(pair),
                _agreement(pair, report),
                _noise(pair),
                _latency(pair),
                _examples(pair),
                _segments(pair),
                _labels(pair.labels),
            ]
        ),
        "</section>",
    ]
    return "".join(parts)


def numbered(sections: list[str]) -> list[str]:
    """Number the sections present (each starts with its ``<h4>``) 1, 2, 3... so a pair
    without a noise floor or segments has no gap in its numbering."""
    present = [section for section in sections if section]
    return [
        section.replace("<h4>", f"<h4>{index}. ", 1)
        for index, section in enumerate(present, start=1)
    ]


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
    return f"<h4>Volume and outcomes</h4>{outcomes}{http}{excluded}"


def _agreement(pair: PairReport, report: Report) -> str:
    text = (
        f"<p>Agreement {pct(pair.agreement_rate)} {interval(pair.agreement_ci)} over "
        f"{pair.compared:,} compared pairs (comparator <code>{escape(pair.comparator or 'none')}"
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
                "Rows: production's class, columns: the shadow's; shade = share of the row "
                "(empty cells unshaded)"
                + (
                    f"; (other): the classes beyond the {len(pair.confusion.classes) - 1} "
                    "most frequent"
                    if "(other)" in pair.confusion.classes
                    else ""
                ),
            )
        )
    return f'<h4>Agreement</h4>{text}<div class="charts">{"".join(charts)}</div>'


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
        (escape(pair.shadow), pct(disagreement), f"{pair.compared:,}"),
        (
            escape(", ".join(floor.baselines)) + " (baseline)",
            pct(floor.rate),
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
    return "<h4>Noise floor</h4>" + _table(("", "disagreement", "compared"), rows) + sentence


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
    if lat.test is not None and lat.mean_diff is not None:
        ci = lat.mean_diff_ci
        ci_text = f" [{ci.lo:+.2f}, {ci.hi:+.2f}]" if ci is not None else ""
        test = (
            f"<p>Per-request difference (shadow &minus; production), mean "
            f"{lat.mean_diff:+.2f} ms{ci_text} (95% t interval); paired t test "
            f"{p_text(lat.test.p_value)} on all {lat.pairs:,} requests both answered. "
            "The interval is the one the test inverts: it excludes 0 exactly when "
            "p &lt; 0.05.</p>"
        )
    if pair.nonfinite_latency:
        test += (
            f'<p class="warn">{pair.nonfinite_latency:,} row(s) with a NaN or infinite '
            "latency are left out of these figures.</p>"
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
    return f'<h4>Latency</h4>{table}{test}<div class="charts">{figure}</div>'


def _examples(pair: PairReport) -> str:
    if not pair.examples:
        return "<h4>Examples</h4><p>No disagreeing requests.</p>"
    items = "".join(_example(e) for e in pair.examples)
    return f"<h4>Top disagreements</h4>{items}"


def _example(example: Example) -> str:
    diff = "not scored" if example.diff_score is None else f"{example.diff_score:.4g}"
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
    parts = ["<h4>Segments</h4>"]
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
            p_text(s.p_adjusted) if s.p_adjusted is not None else "not tested (no other rows)",
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
        mde = (
            f"{100 * labels.mde:.2f} pts"
            if labels.mde is not None
            else "undefined (no request has exactly one model right)"
        )
    else:
        errors = [
            (name, f"{_num(side['mae']):.4g}", f"{_num(side['rmse']):.4g}")
            for name, side in (("production", labels.production), ("shadow", labels.shadow))
        ]
        table = _table(("", "MAE", "RMSE"), errors)
        diff = f"MAE {labels.difference:+.4g} {interval(labels.difference_ci, 1.0, 4)}"
        mde = (
            f"{labels.mde:.4g}"
            if labels.mde is not None
            else "undefined (the error differences do not vary)"
        )
    more = (
        f" About {labels.more_labels_needed:,} more labels would detect a difference of the "
        "observed size."
        if labels.more_labels_needed
        else ""
    )
    folded = (
        f" {labels.duplicates:,} duplicate rows of already counted requests were folded "
        "(each request counts once, with its first answered row)."
        if labels.duplicates
        else ""
    )
    text = (
        f"<p>{labels.n:,} labeled requests ({escape(labels.task)}).{folded} "
        f"Shadow &minus; production: {diff}; "
        f"{escape(labels.test.name)} {p_text(labels.test.p_value)}. Minimum detectable "
        f"difference at 80% power: {mde}.{more}</p>"
    )
    return f"<h4>Ground truth</h4>{table}{text}"


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
            {True: "yes", False: '<span class="bad">no</span>', None: "cannot tell"}[check.noticed],
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


def _canaries(report: Report) -> str:
    """Each canary route: its step timeline, each decision with the evidence it was taken
    on, and the guardrail figures at each decision, as the proxy recorded them."""
    if not report.canaries:
        return ""
    parts = [
        (
            '<section id="canaries"><h2>Canary</h2><p>The decisions each canary route took, '
            "read from the state file the proxy keeps: when, who (<code>auto</code>: the "
            "guardrails; else the operator), the share of traffic before and after, why, and "
            "each guardrail's figure with its one-sided bounds against its limit.</p>"
        )
    ]
    for history in report.canaries:
        parts.append(
            f"<h3>{escape(history.route)}: candidate {escape(history.candidate)}, "
            f"{escape(history.status)} at {history.percent:g}%</h3>"
            f'<p class="note">From <code>{escape(history.source)}</code>.</p>'
        )
        steps = [*history.steps]
        if history.last_evaluation is not None:
            steps.append(history.last_evaluation)
        if not steps:
            parts.append("<p>No decisions recorded yet.</p>")
        parts.append(_table(CANARY_HEAD, [canary_row(s) for s in steps]))
    parts.append("</section>")
    return "".join(parts)


CANARY_HEAD = ("time (UTC)", "action", "by", "share", "status", "requests", "guardrails", "why")


def canary_row(step: CanaryStep) -> list[str]:
    move = f"{step.from_percent:g}% &rarr; {step.percent:g}%"
    if step.from_percent == step.percent:
        move = f"{step.percent:g}%"
    requests = "not recorded"
    if step.candidate_requests is not None:
        requests = (
            f"candidate {step.candidate_requests:,} / production {step.production_requests or 0:,}"
        )
    figures = "<br>".join(escape(guardrail_text(g)) for g in step.guardrails) or "none evaluated"
    return [
        escape(step.at.strftime("%Y-%m-%d %H:%M:%S")),
        escape(step.action),
        escape(step.by),
        move,
        escape(step.status),
        requests,
        f'<span class="text">{figures}</span>',
        f'<span class="text">{escape("; ".join(step.reasons))}</span>',
    ]


def guardrail_text(g: GuardrailFigure) -> str:
    """``p99_latency_ms x1.031 [0.982, 1.094] vs limit 1.2: pass (candidate 512 / ...)``"""

    def value(v: float | None) -> str:
        if v is None:
            return "undefined"
        if g.metric == "p99_latency_ms":
            return f"x{v:.3f}"
        return f"{100 * v:.2f}%"

    bounds = f" [{value(g.lower)}, {value(g.upper)}]" if g.lower is not None else ""
    return (
        f"{g.metric} {value(g.value)}{bounds} vs limit {value(g.limit)}: {g.verdict} "
        f"({g.observations})"
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
    mean = "no outcomes" if arm.mean is None else f"{arm.mean * scale:.{digits}f}"
    if arm.name == trial.control:
        versus = "control"
    elif arm.difference is None:
        versus = "not compared (no outcomes)"
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
        "not tested" if arm.p_value is None else p_text(arm.p_value),
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
    needed = (
        "an undefined number of"
        if power.n_needed_per_arm is None
        else f"{power.n_needed_per_arm:,}"
    )
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
tested with a one-sided pooled two-proportion z test without continuity correction.</p>
<p><b>Latency</b> percentiles are exact (linear interpolation between order statistics,
type 7, numpy's default) over requests both sides answered with finite latencies; rows
with a NaN or infinite latency are counted and left out. The per-request difference
(shadow minus production) is tested with a paired t test over every such request, and
its mean is quoted with the 95% t interval that test inverts: the two never disagree
about zero.</p>
<p><b>Segments</b> compare each segment's agreement with the rest of the pair's rows
(one-sided pooled two-proportion z test, no continuity correction), Holm-corrected
across the segments of a pair.</p>
<p><b>Ground truth</b>: each labelled request counts once (client retries keep their
request id; the first answered row is kept and the rest are counted as folded).
Accuracy is compared with an exact McNemar test (two-sided binomial test on the
discordant requests) on the labelled requests both models answered; the interval of the
accuracy difference is built from the exact Clopper-Pearson interval of the share of
discordant requests the shadow gets right, so it excludes 0 exactly when McNemar's p is
below 0.05. Regression errors are compared with a paired t test on the per-request
difference of absolute errors, whose mean is the MAE difference, with its t interval,
over every labelled request. The minimum detectable difference assumes 80% power at
&alpha; = 0.05.</p>
<p><b>Decision</b> (the cards at the top): each candidate is judged on its route's
pre-registered <code>promotion:</code> criteria: accuracy (regression: MAE), disagreement
(over the baseline's, else absolute), p99 latency ratio and error-rate increase. Each is
a <i>non-inferiority</i> question: is the candidate at most a margin worse than
production? A criterion <i>passes</i> when its one-sided 95% bound on the worse side is
inside the margin; <i>fails</i> when the bound on the better side is beyond it (Holm-
corrected across the criteria); is <i>open</i> otherwise, with about how many more labels
or requests would settle it. A bare "not significant" is not evidence of no difference:
only a bound inside the margin is. PROMOTE needs every criterion to pass, REJECT one to
fail; anything else is HOLD. The chance of promoting a candidate that breaks a criterion,
or of rejecting one that meets them all, is at most 5% each.</p>
<p><b>Sample-ratio check</b> (A/B and canary routes): the units per arm are compared with the
configured split by a chi-square goodness-of-fit test, flagged at p &lt; 0.001. A
mismatch means assignment or logging is broken: read no other figure of that experiment
until it is explained.</p>
<p><b>Power</b>: the sample a test needs to detect a stated effect with 80% probability
at &alpha; = 0.05 (two-sided), and the smallest effect the current sample detects. A test
short of its power that finds nothing has shown nothing.</p>
<p><b>Experiments</b>: ordinal outcomes use the Mann-Whitney U test with the normal
approximation, tie correction and a continuity correction of 1/2; binary outcomes the
pooled two-proportion z test without continuity correction; the sample-ratio check is
Pearson's chi-square goodness of fit.</p></div>"""
