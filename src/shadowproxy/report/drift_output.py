"""The Drift section's outputs: the ``drift`` block of summary.json, the terminal lines
and the HTML section, from the ``report.drift`` results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from shadowproxy.report.drift import MAX_ANSWERS, DriftSection, RouteDrift
from shadowproxy.stats import drift as stats

# --- summary.json ---------------------------------------------------------------------


def as_json(section: DriftSection) -> dict[str, Any]:
    """The ``drift`` block: ``{<route>: {features, prediction, jumps, invariants}}``."""
    return {route: _route_json(r) for route, r in section.routes.items()}


def _route_json(r: RouteDrift) -> dict[str, Any]:
    return {
        "features": [_drift_json(d) for d in r.features],
        "prediction": _drift_json(r.prediction) if r.prediction else None,
        "jumps": [
            {
                "at": datetime.fromtimestamp(j.at, UTC).isoformat(),
                "from_version": j.from_version,
                "to_version": j.to_version,
                "prediction": _drift_json(j.prediction) if j.prediction else None,
                "violation_rate": {"before": j.violation_rate[0], "after": j.violation_rate[1]},
                "flagged": j.flagged,
            }
            for j in r.jumps
        ],
        "invariants": [
            {
                "name": i.name,
                "role": i.role,
                "count": i.count,
                "n": i.n,
                "rate": i.rate,
                "ci95": list(i.ci95),
                "examples": list(i.examples),
            }
            for i in r.invariants
        ],
    }


def _drift_json(d: stats.Drift) -> dict[str, Any]:
    return {
        "name": d.name,
        "kind": d.kind,
        "test": {"name": d.test.name, "statistic": d.test.statistic, "p_value": d.test.p_value},
        "psi": d.psi,
        "effect": {
            **d.effect,
            "n_reference": d.n_reference,
            "n_current": d.n_current,
            "p_adjusted": d.p_adjusted,
        },
        "flagged": d.flagged,
    }


def summary_lines(section: DriftSection) -> str:
    """What the terminal shows: the flagged features and the release jumps."""
    if section.note:
        return f"Drift: {section.note}"
    lines = []
    for route, r in section.routes.items():
        flagged = [d for d in (*r.features, *([r.prediction] if r.prediction else [])) if d.flagged]
        moved = ", ".join(f"{d.name} (PSI {d.psi:.2f})" for d in flagged) or "none"
        lines.append(f"Drift {route}: flagged {moved}")
        for j in r.jumps:
            when = datetime.fromtimestamp(j.at, UTC).isoformat(timespec="seconds")
            psi = f"PSI {j.prediction.psi:.2f}" if j.prediction else "no prediction"
            state = "JUMP" if j.flagged else "no jump"
            lines.append(
                f"  release {j.from_version} -> {j.to_version} at {when}: {state} ({psi}, "
                f"violations {100 * j.violation_rate[0]:.1f}% -> {100 * j.violation_rate[1]:.1f}%)"
            )
    return "\n".join(lines) or "Drift: no monitored route in the recording"


# --- HTML -----------------------------------------------------------------------------


def render(section: DriftSection | None) -> str:
    """The Drift section of the HTML report."""
    from shadowproxy.report import svg

    parts = ['<section id="drift"><h2>Drift</h2>']
    if section is None or section.note:
        note = section.note if section else "not analysed"
        parts.append(f"<p>{escape(note or '')}</p></section>")
        return "".join(parts)
    for route, r in section.routes.items():
        parts.append(f"<h3>Route {escape(route)}</h3>")
        parts.append(
            f"<p>Reference: {escape(r.reference)} ({r.n_reference:,} answers); current: "
            f"{r.n_current:,} answers."
            + (f" Sampled: at most {MAX_ANSWERS:,} answers read." if r.sampled else "")
            + "</p>"
        )
        rows = [*r.features, *([r.prediction] if r.prediction else [])]
        parts.append(_drift_table(rows))
        parts.append(_jump_table(r))
        parts.append(_invariant_table(r))
        if r.weekly:
            names = sorted({k for _, values in r.weekly for k in values})
            series = {
                n: [(w, v[n]) for w, v in r.weekly if n in v and not math.isnan(v[n])]
                for n in names
            }
            parts.append(svg.lines_over_time(f"{route}: weekly means and prediction mix", series))
    parts.append("</section>")
    return "".join(parts)


def _head(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}g}"


def _effect(d: stats.Drift) -> str:
    if d.kind == "numeric" and d.effect:
        q = d.effect["quantile_shift"]
        return (
            f"mean {_fmt(d.effect['reference_mean'])} → {_fmt(d.effect['current_mean'])}; "
            + ", ".join(f"{k} {v:+.3g}" for k, v in q.items())
        )
    moved = d.effect.get("moved", [])
    return ", ".join(
        f"{m['category']}: {100 * m['reference_share']:.1f}% → {100 * m['current_share']:.1f}%"
        for m in moved[:3]
    )


def _drift_table(rows: Sequence[stats.Drift]) -> str:
    body = "".join(
        f"<tr><td>{escape(d.name)}</td><td>{d.kind}</td><td>{escape(d.test.name)}</td>"
        f"<td>{_fmt(d.test.statistic)}</td><td>{_fmt(d.p_adjusted)}</td><td>{_fmt(d.psi)}</td>"
        f"<td>{escape(_effect(d))}</td><td>{'<b>drift</b>' if d.flagged else 'stable'}</td></tr>"
        for d in rows
    )
    head = _head("feature", "kind", "test", "statistic", "Holm p", "PSI", "effect", "")
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _jump_table(r: RouteDrift) -> str:
    if not r.jumps:
        return "<p>No model version change in the window.</p>"
    body = "".join(
        f"<tr><td>{datetime.fromtimestamp(j.at, UTC).isoformat(timespec='seconds')}</td>"
        f"<td>{escape(j.from_version)} → {escape(j.to_version)}</td>"
        f"<td>{_fmt(j.prediction.psi) if j.prediction else 'n/a'}</td>"
        f"<td>{_fmt(j.prediction.p_adjusted) if j.prediction else 'n/a'}</td>"
        f"<td>{100 * j.violation_rate[0]:.1f}% → {100 * j.violation_rate[1]:.1f}%</td>"
        f"<td>{'<b>jump</b>' if j.flagged else 'listed'}</td></tr>"
        for j in r.jumps
    )
    more = f"<p>{r.jumps_not_listed} more changes not listed.</p>" if r.jumps_not_listed else ""
    head = _head("at", "version", "prediction PSI", "p", "violation rate", "")
    return f"<h4>Releases</h4><table><thead>{head}</thead><tbody>{body}</tbody></table>{more}"


def _invariant_table(r: RouteDrift) -> str:
    if not r.invariants:
        return ""
    body = "".join(
        f"<tr><td>{escape(i.name)}</td><td>{escape(i.role)}</td><td>{i.count:,}</td><td>{i.n:,}</td>"
        f"<td>{100 * i.rate:.2f}%</td><td>[{100 * i.ci95[0]:.2f}, {100 * i.ci95[1]:.2f}]</td>"
        f"<td>{escape(', '.join(i.examples))}</td></tr>"
        if i.n
        else f"<tr><td>{escape(i.name)}</td><td>{escape(i.role)}</td><td>0</td><td>0</td>"
        "<td>n/a</td><td></td><td></td></tr>"
        for i in r.invariants
    )
    head = _head("invariant", "role", "violations", "checked", "rate", "95% CI", "examples")
    return f"<h4>Invariants</h4><table><thead>{head}</thead><tbody>{body}</tbody></table>"
