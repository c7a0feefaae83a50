"""The decision cards at the top of the page: one per candidate, its status, one
sentence and the criteria table (estimate, bounds, margin, result)."""

from __future__ import annotations

from html import escape

from shadowproxy.report.decision import open_text, value_text
from shadowproxy.report.formatting import html_table
from shadowproxy.report.model import (
    Criterion,
    PairReport,
    Report,
)
from shadowproxy.report.verdict import p_text


def decisions_section(report: Report) -> str:
    """A card per candidate, first thing on the page: the status, one sentence, and each
    criterion with its estimate, bounds, test and margin."""
    cards = [decision_card(p) for p in report.pairs if p.decision is not None]
    if not cards:
        return ""
    return '<section id="decisions"><h2>Decisions</h2>' + "".join(cards) + "</section>"


def decision_card(pair: PairReport) -> str:
    decision = pair.decision
    assert decision is not None
    rows = [
        (
            escape(c.name),
            escape(value_text(c.name, c.estimate)),
            escape(bounds_text(c)),
            escape(value_text(c.name, c.margin)),
            escape(p_text(c.p_value) if c.p_value is not None else "no test: no data"),
            f'<span class="{"bad" if c.result == "fail" else ""}">{escape(result_text(c))}</span>',
            f'<span class="text">{escape(c.test)}</span>',
        )
        for c in decision.criteria
    ]
    table = html_table(
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


def bounds_text(c: Criterion) -> str:
    if c.interval is None:
        return "undefined: no data"
    return f"{value_text(c.name, c.interval.lo)} .. {value_text(c.name, c.interval.hi)}"


def result_text(c: Criterion) -> str:
    if c.result != "open":
        return c.result
    return "open: " + open_text(c).split(" ", 1)[1]
