"""The report as one self-contained HTML file: inline CSS and SVG, no script, no
network. It reads on a laptop screen and prints (the print stylesheet keeps each
shadow's section together and drops the navigation). Every value that came from the
recording is escaped: request bodies are untrusted input.
"""

from __future__ import annotations

from html import escape

from shadowproxy import __version__
from shadowproxy.report.decision_cards import decisions_section
from shadowproxy.report.formatting import anchor, html_table, interval, pct
from shadowproxy.report.model import (
    PairReport,
    Report,
)
from shadowproxy.report.pair_sections import (
    agreement_section,
    examples_section,
    labels_section,
    latency_section,
    noise_section,
    segments_section,
    volume_section,
)
from shadowproxy.report.run_sections import canaries_section, chaos_section, experiments_section

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
        decisions_section(report),
        _overview(report),
        *(_pair_section(pair, report) for pair in ordered(report.pairs)),
        chaos_section(report),
        canaries_section(report),
        experiments_section(report),
        _methods(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title(report))} — {escape(report.root)}</title>"
        f"<style>{CSS}</style></head><body>" + "".join(body) + "</body></html>\n"
    )


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


def _overview(report: Report) -> str:
    if not report.pairs:
        return ""
    rows = [
        (
            f'<a href="#{anchor(p)}">{escape(p.route)}</a>',
            escape(p.shadow),
            escape(p.role),
            f"{p.rows:,}",
            f"{pct(p.agreement_rate)} {interval(p.agreement_ci)}",
            f'<span class="text">{escape(p.verdict)}</span>',
        )
        for p in ordered(report.pairs)
    ]
    table = html_table(("route", "shadow", "role", "rows", "agreement [95% CI]", "verdict"), rows)
    return f"<nav><h2>Verdicts</h2>{table}</nav>"


def _pair_section(pair: PairReport, report: Report) -> str:
    parts = [
        f'<section class="pair" id="{anchor(pair)}">',
        (
            f'<h3>{escape(pair.shadow)} <span class="meta">({escape(pair.role)}) on route '
            f"{escape(pair.route)}</span></h3>"
        ),
        f'<p class="verdict">{escape(pair.verdict)}</p>',
        *numbered(
            [
                volume_section(pair),
                agreement_section(pair, report),
                noise_section(pair),
                latency_section(pair),
                examples_section(pair),
                segments_section(pair),
                labels_section(pair.labels),
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
