"""The sections of one (route, shadow) pair: volume, agreement, noise floor, latency,
examples of disagreement, segments and ground truth."""

from __future__ import annotations

from html import escape

from shadowproxy.report import svg
from shadowproxy.report.formatting import (
    as_number,
    ci_text,
    cut,
    duration_text,
    figure_html,
    html_table,
    interval,
    ms,
    pct,
)
from shadowproxy.report.model import (
    OUTCOME_NAMES,
    Example,
    Labels,
    PairReport,
    Report,
    Segment,
)
from shadowproxy.report.verdict import p_text


def volume_section(pair: PairReport) -> str:
    outcomes = html_table(
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
    http = html_table(
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


def agreement_section(pair: PairReport, report: Report) -> str:
    text = (
        f"<p>Agreement {pct(pair.agreement_rate)} {interval(pair.agreement_ci)} over "
        f"{pair.compared:,} compared pairs (comparator <code>{escape(pair.comparator or 'none')}"
        "</code>; rows without a comparable answer are left out).</p>"
    )
    reference = 1.0 - pair.noise_floor.rate if pair.noise_floor else None
    charts = [
        figure_html(
            svg.rate_over_time(
                f"Agreement over time, {pair.shadow}",
                [(t.start, t.rate, t.ci.lo, t.ci.hi) for t in pair.timeline],
                reference,
            ),
            f"Agreement per {duration_text(report.bucket_seconds)} with its 95% Wilson band"
            + ("; dashed: the baseline's agreement (noise floor)" if reference else ""),
        )
    ]
    if pair.diff_histogram:
        bins = [(b.lo, b.hi, b.count) for b in pair.diff_histogram]
        charts.append(
            figure_html(
                svg.histogram(f"diff_score, {pair.shadow}", bins, "diff_score"),
                "diff_score of compared pairs (0 = identical); the last bar holds the top 1%",
            )
        )
    if pair.confusion is not None:
        charts.append(
            figure_html(
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


def noise_section(pair: PairReport) -> str:
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
    return "<h4>Noise floor</h4>" + html_table(("", "disagreement", "compared"), rows) + sentence


def latency_section(pair: PairReport) -> str:
    lat = pair.latency
    table = html_table(
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
    figure = figure_html(chart, "Latency distributions on requests both sides answered")
    return f'<h4>Latency</h4>{table}{test}<div class="charts">{figure}</div>'


def examples_section(pair: PairReport) -> str:
    if not pair.examples:
        return "<h4>Examples</h4><p>No disagreeing requests.</p>"
    items = "".join(example_block(e) for e in pair.examples)
    return f"<h4>Top disagreements</h4>{items}"


def example_block(example: Example) -> str:
    diff = "not scored" if example.diff_score is None else f"{example.diff_score:.4g}"
    when = example.ts.isoformat(timespec="seconds") if example.ts else ""
    summary = (
        f"<code>{escape(example.request_id)}</code> {escape(example.method or '')} "
        f"{escape(example.path or '')} · production "
        f"<code>{escape(cut(example.prod_prediction))}</code>"
        f" · shadow <code>{escape(cut(example.shadow_prediction))}</code> · diff {diff}"
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


def segments_section(pair: PairReport) -> str:
    if not pair.segments:
        return ""
    parts = ["<h4>Segments</h4>"]
    for path in dict.fromkeys(s.path for s in pair.segments):
        segments = [s for s in pair.segments if s.path == path]
        parts.append(segment_block(path, segments, pair.agreement_rate))
    return "".join(parts)


def segment_block(path: str, segments: list[Segment], overall: float | None) -> str:
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
        + html_table(("segment", "rows", "agreement [95% CI]", "Holm-adjusted p", ""), rows)
        + figure_html(
            chart,
            "Agreement per segment with 95% intervals; red: significantly worse "
            "than the rest (one-sided, Holm-corrected); dashed: overall",
        )
    )


def labels_section(labels: Labels | None) -> str:
    if labels is None:
        return ""
    if labels.task == "classification":
        rows = [
            (name, f"{pct(as_number(side['accuracy']), 2)} {ci_text(side['accuracy_ci95'])}")
            for name, side in (("production", labels.production), ("shadow", labels.shadow))
        ]
        table = html_table(("", "accuracy [95% CI]"), rows)
        diff = f"{100 * labels.difference:+.2f} pts {interval(labels.difference_ci, digits=2)}"
        mde = (
            f"{100 * labels.mde:.2f} pts"
            if labels.mde is not None
            else "undefined (no request has exactly one model right)"
        )
    else:
        errors = [
            (name, f"{as_number(side['mae']):.4g}", f"{as_number(side['rmse']):.4g}")
            for name, side in (("production", labels.production), ("shadow", labels.shadow))
        ]
        table = html_table(("", "MAE", "RMSE"), errors)
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
