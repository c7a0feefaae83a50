"""How the HTML page and the terminal table write numbers, intervals and small tables.
Every value from the recording is escaped by the callers' ``escape``; the helpers here
only take figures."""

from __future__ import annotations

import math
from collections.abc import Iterable
from html import escape

from shadowproxy.report.model import (
    Interval,
    PairReport,
)

NA = "n/a (no data)"
"""Shown where a figure is undefined and nothing more specific is known; places that know
why say so instead (plain ASCII: the terminal table uses it too)."""


def pct(value: float | None, digits: int = 1) -> str:
    return NA if value is None or math.isnan(value) else f"{100 * value:.{digits}f}%"


def interval(ci: Interval | None, scale: float = 100.0, digits: int = 1) -> str:
    if ci is None or math.isnan(ci.lo):
        return ""
    return f"[{ci.lo * scale:.{digits}f}, {ci.hi * scale:.{digits}f}]"


def ms(value: float | None) -> str:
    return "n/a (no answered requests)" if value is None else f"{value:,.1f} ms"


def anchor(pair: PairReport) -> str:
    return escape(f"pair-{pair.route}-{pair.shadow}".replace(" ", "_"))


def html_table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table from already-escaped cell HTML."""
    header = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>"


def duration_text(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds} s"


def cut(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "null"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def ci_text(value: object) -> str:
    if isinstance(value, list) and len(value) == 2:
        return interval(Interval(float(value[0]), float(value[1])), digits=2)
    return ""
