"""Small inline SVG charts: the report must be one file that opens offline, so no
chart library and no script. Each function takes plain numbers and returns an
``<svg>`` string that scales to its container (``viewBox``) and prints as vectors.
All text is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

PROD = "#4c78a8"
SHADOW = "#f58518"
BAND = "#4c78a8"
BAD = "#d62728"
GRID = "#ddd"
INK = "#333"

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 12, 34


@dataclass(frozen=True)
class Frame:
    """Maps data coordinates into the plotting area of a ``WIDTH x HEIGHT`` chart."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = WIDTH
    height: int = HEIGHT

    def x(self, value: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return LEFT + (value - self.x0) / span * (self.width - LEFT - RIGHT)

    def y(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.height - BOTTOM - (value - self.y0) / span * (self.height - TOP - BOTTOM)


def _open(
    title: str, width: int = WIDTH, height: int = HEIGHT, max_width: int | None = None
) -> str:
    """``max_width`` keeps a small chart (a 3-class heatmap) from being blown up."""
    style = f' style="max-width: {max_width}px"' if max_width else ""
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img"{style} '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )


def _text(x: float, y: float, text: str, anchor: str = "middle", size: int = 11) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{INK}">{escape(text)}</text>'
    )


def _y_axis(frame: Frame, ticks: Sequence[float], fmt: str) -> str:
    parts = []
    for tick in ticks:
        y = frame.y(tick)
        parts.append(
            f'<line x1="{LEFT}" x2="{frame.width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID}"/>'
        )
        parts.append(_text(LEFT - 4, y + 4, format(tick, fmt), "end"))
    return "".join(parts)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def empty(title: str, message: str) -> str:
    return _open(title, WIDTH, 60) + _text(WIDTH / 2, 34, message) + "</svg>"


# --- agreement over time -------------------------------------------------------------


def rate_over_time(
    title: str,
    points: Sequence[tuple[datetime, float, float, float]],
    reference: float | None = None,
) -> str:
    """A rate line with its confidence band; ``points`` are (time, rate, lo, hi).
    ``reference`` draws a dashed line (the noise floor's agreement)."""
    if not points:
        return empty(title, "no compared rows")
    xs = [p[0].timestamp() for p in points]
    low = min([p[2] for p in points] + ([reference] if reference is not None else []))
    y0 = max(0.0, math.floor((low - 0.02) * 50) / 50)
    frame = Frame(min(xs), max(xs) if len(xs) > 1 else min(xs) + 1, y0, 1.0)
    band_top = " ".join(
        f"{frame.x(x):.1f},{frame.y(p[3]):.1f}" for x, p in zip(xs, points, strict=True)
    )
    band_bottom = " ".join(
        f"{frame.x(x):.1f},{frame.y(p[2]):.1f}"
        for x, p in reversed(list(zip(xs, points, strict=True)))
    )
    line = " ".join(
        f"{frame.x(x):.1f},{frame.y(p[1]):.1f}" for x, p in zip(xs, points, strict=True)
    )
    parts = [_open(title), _y_axis(frame, nice_ticks(y0, 1.0), ".0%")]
    parts.append(
        f'<polygon points="{band_top} {band_bottom}" fill="{BAND}" fill-opacity="0.2" '
        'stroke="none"/>'
    )
    parts.append(f'<polyline points="{line}" fill="none" stroke="{BAND}" stroke-width="1.8"/>')
    if len(points) == 1:
        cx, cy = frame.x(xs[0]), frame.y(points[0][1])
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{BAND}"/>')
    if reference is not None:
        y = frame.y(reference)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{INK}" '
            'stroke-dasharray="4 3"/>'
        )
    parts.append(_time_labels(frame, points[0][0], points[-1][0]))
    parts.append("</svg>")
    return "".join(parts)


def _time_labels(frame: Frame, first: datetime, last: datetime) -> str:
    """Start, middle and end, in a format that suits the span (seconds for a run of
    minutes), anchored so that none runs past the chart's edge."""
    span = (last - first).total_seconds()
    fmt = "%H:%M:%S" if span < 3600 else "%m-%d %H:%M" if span < 2 * 86400 else "%Y-%m-%d"
    y = HEIGHT - BOTTOM + 16
    if first == last:
        return _text(frame.x(first.timestamp()), y, first.strftime(fmt) + " UTC")
    middle = first + (last - first) / 2
    return (
        _text(LEFT, y, first.strftime(fmt), "start")
        + _text(frame.x(middle.timestamp()), y, middle.strftime(fmt))
        + _text(WIDTH - RIGHT, y, last.strftime(fmt) + " UTC", "end")
    )


# --- histograms ----------------------------------------------------------------------


def overlaid_histograms(
    title: str,
    series: Sequence[tuple[str, str, Sequence[tuple[float, float, int]]]],
    unit: str,
) -> str:
    """Step outlines of several distributions on shared bins (share of each series'
    rows per bin, log-spaced x labels); ``series`` are (name, colour, bins)."""
    bins = series[0][2] if series else ()
    if not bins or not any(sum(c for _lo, _hi, c in s[2]) for s in series):
        return empty(title, "no answered requests")
    shares = [[c / max(sum(b[2] for b in s[2]), 1) for _lo, _hi, c in s[2]] for s in series]
    top = max(max(s) for s in shares) * 1.1
    frame = Frame(0, len(bins), 0.0, top)
    parts = [_open(title), _y_axis(frame, nice_ticks(0.0, top, 4), ".0%")]
    for (name, colour, _bins), values in zip(series, shares, strict=True):
        path = [f"M{frame.x(0):.1f},{frame.y(0):.1f}"]
        for i, value in enumerate(values):
            path.append(
                f"L{frame.x(i):.1f},{frame.y(value):.1f} L{frame.x(i + 1):.1f},{frame.y(value):.1f}"
            )
        path.append(f"L{frame.x(len(values)):.1f},{frame.y(0):.1f}")
        parts.append(
            f'<path d="{" ".join(path)}" fill="{colour}" fill-opacity="0.15" stroke="{colour}" '
            f'stroke-width="1.5"><title>{escape(name)}</title></path>'
        )
    for i in range(0, len(bins), max(1, len(bins) // 6)):
        parts.append(_text(frame.x(i), HEIGHT - BOTTOM + 16, f"{bins[i][0]:.3g}"))
    parts.append(_text(WIDTH - RIGHT, HEIGHT - 4, unit, "end", 10))
    parts.append(_legend([(name, colour) for name, colour, _b in series]))
    parts.append("</svg>")
    return "".join(parts)


def _legend(items: Sequence[tuple[str, str]]) -> str:
    parts = []
    x = WIDTH - RIGHT - 150
    for i, (name, colour) in enumerate(items):
        y = TOP + 4 + i * 16
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="10" fill="{colour}"/>')
        parts.append(_text(x + 16, y + 9, name, "start"))
    return "".join(parts)


def histogram(title: str, bins: Sequence[tuple[float, float, int]], label: str) -> str:
    """Plain bars; the last bin may be open-ended (``hi`` infinite) and is marked ``+``."""
    if not bins or not sum(b[2] for b in bins):
        return empty(title, "no values")
    top = max(b[2] for b in bins) * 1.1
    frame = Frame(0, len(bins), 0.0, top)
    parts = [_open(title), _y_axis(frame, nice_ticks(0.0, top, 4), ",.0f")]
    for i, (lo, hi, count) in enumerate(bins):
        x, y = frame.x(i), frame.y(count)
        w = frame.x(i + 1) - x - 1
        bound = "+" if math.isinf(hi) else f" to {hi:.3g}"
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" '
            f'height="{frame.y(0) - y:.1f}" fill="{SHADOW}"><title>{lo:.3g}{bound}: '
            f"{count:,}</title></rect>"
        )
    for i in range(0, len(bins), max(1, len(bins) // 6)):
        parts.append(_text(frame.x(i), HEIGHT - BOTTOM + 16, f"{bins[i][0]:.3g}"))
    parts.append(_text(WIDTH - RIGHT, HEIGHT - 4, label, "end", 10))
    parts.append("</svg>")
    return "".join(parts)


# --- confusion matrix ----------------------------------------------------------------


def heatmap(title: str, classes: Sequence[str], cells: dict[tuple[str, str], int]) -> str:
    """Rows: production's class; columns: the shadow's. Shade is the share of the row,
    so a class's disagreements show whatever its frequency."""
    if not classes:
        return empty(title, "no label predictions")
    cell = 46 if len(classes) <= 8 else max(24, 368 // len(classes))
    label_w, head_h = 110, 80
    # Column names are rotated up and to the right: room for the last one's tail.
    size_w = label_w + cell * len(classes) + 90
    size_h = head_h + cell * len(classes) + 10
    parts = [_open(title, size_w, size_h, max_width=round(size_w * 1.25))]
    for j, name in enumerate(classes):
        x = label_w + j * cell + cell / 2
        parts.append(
            f'<text x="{x:.1f}" y="{head_h - 6}" font-size="11" fill="{INK}" '
            f'transform="rotate(-35 {x:.1f} {head_h - 6})" text-anchor="start">'
            f"{escape(_short(name))}</text>"
        )
    for i, row in enumerate(classes):
        total = sum(cells.get((row, col), 0) for col in classes) or 1
        y = head_h + i * cell
        parts.append(_text(label_w - 6, y + cell / 2 + 4, _short(row), "end"))
        for j, col in enumerate(classes):
            count = cells.get((row, col), 0)
            share = count / total
            colour = BAND if row == col else BAD
            # An empty cell is unshaded: a tint would read as "a few".
            fill = (
                f'fill="{colour}" fill-opacity="{0.08 + 0.92 * share:.3f}"'
                if count
                else 'fill="none" stroke="#ddd"'
            )
            parts.append(
                f'<rect x="{label_w + j * cell}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f"{fill}><title>production {escape(row)} / shadow {escape(col)}: {count:,}"
                "</title></rect>"
            )
            parts.append(
                _text(label_w + j * cell + cell / 2 - 1, y + cell / 2 + 4, _count(count), size=10)
            )
    parts.append("</svg>")
    return "".join(parts)


def _short(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


# --- segments ------------------------------------------------------------------------


def rate_bars(
    title: str, items: Sequence[tuple[str, float, float, float, bool]], overall: float | None
) -> str:
    """Horizontal bars of rates with interval whiskers; ``items`` are (label, rate, lo,
    hi, flagged) and flagged bars are red. ``overall`` draws the pair's own rate."""
    if not items:
        return empty(title, "no segments")
    row_h, label_w = 22, 150
    height = TOP + row_h * len(items) + 30
    low = min([lo for _l, _r, lo, _h, _f in items] + ([overall] if overall is not None else []))
    x0 = max(0.0, math.floor((low - 0.02) * 20) / 20)
    span = (1.0 - x0) or 1.0

    def x(value: float) -> float:
        return label_w + (value - x0) / span * (WIDTH - label_w - RIGHT)

    parts = [_open(title, WIDTH, height)]
    for tick in nice_ticks(x0, 1.0, 5):
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{TOP}" y2="{height - 24}" '
            f'stroke="{GRID}"/>'
        )
        parts.append(_text(x(tick), height - 8, format(tick, ".0%")))
    for i, (label, rate, lo, hi, flagged) in enumerate(items):
        y = TOP + i * row_h
        colour = BAD if flagged else BAND
        parts.append(_text(label_w - 6, y + row_h / 2 + 4, _short(label, 22), "end"))
        parts.append(
            f'<rect x="{x(x0):.1f}" y="{y + 4}" width="{max(x(rate) - x(x0), 0.5):.1f}" '
            f'height="{row_h - 8}" fill="{colour}" fill-opacity="0.6"><title>{escape(label)}: '
            f"{rate:.1%} [{lo:.1%}, {hi:.1%}]</title></rect>"
        )
        mid = y + row_h / 2
        parts.append(
            f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{mid:.1f}" y2="{mid:.1f}" '
            f'stroke="{INK}" stroke-width="1.5"/>'
        )
    if overall is not None:
        parts.append(
            f'<line x1="{x(overall):.1f}" x2="{x(overall):.1f}" y1="{TOP}" y2="{height - 24}" '
            f'stroke="{INK}" stroke-dasharray="4 3"/>'
        )
    parts.append("</svg>")
    return "".join(parts)
