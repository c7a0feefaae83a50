"""From raw runs to medians, paired ratios, targets and markdown tables (pure).

A *run* is one load against one system in one scenario and round, a flat dict::

    {"round": 1, "scenario": "healthy", "system": "shadowproxy", "load": "c64",
     "rps": 3120.5, "p50_ms": ..., "p99_ms": ..., "ok": ..., "errors": ...,
     "keeping_up": True | False | None, "why_not": ..., "cpu_s_per_1k": ..., "rss_mb": ...}

Comparisons are *paired*: a ratio or difference is taken within each round (the two
systems ran minutes apart on the same machine state) and the median of those is shown,
with the min-max over rounds in brackets.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Run = dict[str, Any]
BAD_SHADOWS = ("slow", "down", "blackhole")
SHADOW_LABELS = {
    "healthy": "healthy",
    "slow": "slow (+200 ms)",
    "down": "down (refused)",
    "blackhole": "black-holed",
}


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    n: int


def stat(values: Sequence[float]) -> Stat | None:
    if not values:
        return None
    return Stat(statistics.median(values), min(values), max(values), len(values))


def fmt(value: Stat | None, spec: str = ",.0f", suffix: str = "") -> str:
    """``median (min-max)``, or just the median for one round; ``-`` without data."""
    if value is None:
        return "-"
    text = f"{value.median:{spec}}{suffix}"
    if value.n > 1:
        text += f" ({value.low:{spec}}-{value.high:{spec}})"
    return text


# --- selecting values ---------------------------------------------------------------


def by_round(
    runs: Iterable[Run], system: str, scenario: str, load: str, metric: str
) -> dict[int, float]:
    return {
        run["round"]: run[metric]
        for run in runs
        if run["system"] == system
        and run["scenario"] == scenario
        and run["load"] == load
        and run.get(metric) is not None
    }


def series(runs: Sequence[Run], system: str, scenario: str, load: str, metric: str) -> Stat | None:
    return stat(list(by_round(runs, system, scenario, load, metric).values()))


def paired(
    a: dict[int, float], b: dict[int, float], op: Callable[[float, float], float]
) -> Stat | None:
    """``op(a, b)`` per round where both ran, summarized."""
    return stat([op(a[r], b[r]) for r in sorted(a.keys() & b.keys()) if b[r] != 0])


def ratio(x: float, y: float) -> float:
    return x / y


def difference(x: float, y: float) -> float:
    return x - y


def change_pct(x: float, y: float) -> float:
    return (x / y - 1.0) * 100.0


def peak_rss(runs: Sequence[Run], system: str, scenarios: Sequence[str]) -> Stat | None:
    """Per round, the highest peak RSS over ``scenarios``; summarized over rounds."""
    peaks: dict[int, float] = {}
    for run in runs:
        if run["system"] == system and run["scenario"] in scenarios and run.get("rss_mb"):
            peaks[run["round"]] = max(peaks.get(run["round"], 0.0), run["rss_mb"])
    return stat(list(peaks.values()))


def behind(runs: Sequence[Run], system: str, scenario: str, load: str) -> tuple[int, int]:
    """(runs where the load generator fell behind, runs) for one cell."""
    cell = [r for r in runs if (r["system"], r["scenario"], r["load"]) == (system, scenario, load)]
    return sum(1 for r in cell if r.get("keeping_up") is False), len(cell)


# --- tables ---------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def healthy_table(runs: Sequence[Run], systems: Sequence[str]) -> list[str]:
    header = [
        "system",
        "req/s, 16 conns",
        "req/s, 64 conns",
        "p50 ms @500/s",
        "p99 ms @500/s",
        "p50 ms @1500/s",
        "p99 ms @1500/s",
        "CPU s/1k req @1500/s",
        "peak RSS MB",
    ]
    rows = []
    for system in systems:
        cells = [(load, metric) for load in ("r500", "r1500") for metric in ("p50_ms", "p99_ms")]
        rows.append(
            [
                system,
                fmt(series(runs, system, "healthy", "c16", "rps")),
                fmt(series(runs, system, "healthy", "c64", "rps")),
                *(latency_cell(runs, system, "healthy", load, metric) for load, metric in cells),
                fmt(series(runs, system, "healthy", "r1500", "cpu_s_per_1k"), ".3f"),
                fmt(peak_rss(runs, system, ["healthy"]), ".1f"),
            ]
        )
    return table(header, rows)


OVERLOADED = "*"
GENERATOR_BEHIND = "~"
LEGEND = (
    f"`{OVERLOADED}` the system answered under 95% of the scheduled rate (overloaded: the "
    f"latency is a growing queue); `{GENERATOR_BEHIND}` the load generator fell behind. "
    "A target verdict carrying either mark compares against such a run: treat it as weak"
)


def latency_cell(runs: Sequence[Run], system: str, scenario: str, load: str, metric: str) -> str:
    """A fixed-rate latency, flagged when a run behind it was overloaded or the generator lagged."""
    cell = [r for r in runs if (r["system"], r["scenario"], r["load"]) == (system, scenario, load)]
    flags = OVERLOADED if any(_overloaded(r) for r in cell) else ""
    flags += GENERATOR_BEHIND if any(r.get("keeping_up") is False for r in cell) else ""
    return fmt(series(runs, system, scenario, load, metric), ".3f") + flags


def _overloaded(run: Run) -> bool:
    return bool(run.get("rate")) and run["rps"] < 0.95 * run["rate"]


def comparison_table(runs: Sequence[Run], systems: Sequence[str]) -> list[str]:
    header = [
        "system (healthy shadow)",
        "req/s 64 conns vs direct",
        "req/s 64 conns vs nginx-mirror",
        "added p50 ms @500/s",
        "added p99 ms @500/s",
        "added p99 ms @1500/s",
        "CPU vs nginx-mirror @1500/s",
    ]
    rows = []
    for system in systems:
        if system == "direct":
            continue
        rows.append(
            [
                system,
                fmt(vs_healthy(runs, system, "direct", "c64", "rps", ratio), ".2f", "x"),
                fmt(vs_healthy(runs, system, "nginx-mirror", "c64", "rps", ratio), ".2f", "x"),
                fmt(vs_healthy(runs, system, "direct", "r500", "p50_ms", difference), "+.3f"),
                fmt(vs_healthy(runs, system, "direct", "r500", "p99_ms", difference), "+.3f"),
                fmt(vs_healthy(runs, system, "direct", "r1500", "p99_ms", difference), "+.3f"),
                fmt(
                    vs_healthy(runs, system, "nginx-mirror", "r1500", "cpu_s_per_1k", ratio),
                    ".1f",
                    "x",
                ),
            ]
        )
    return table(header, rows)


def vs_healthy(
    runs: Sequence[Run],
    system: str,
    other: str,
    load: str,
    metric: str,
    op: Callable[[float, float], float],
) -> Stat | None:
    """``op(system, other)`` per round, both with a healthy shadow."""
    mine = by_round(runs, system, "healthy", load, metric)
    return paired(mine, by_round(runs, other, "healthy", load, metric), op)


def bad_shadow_table(runs: Sequence[Run], systems: Sequence[str]) -> list[str]:
    header = [
        "system",
        "shadow",
        "req/s, 64 conns",
        "vs healthy",
        "p99 ms @500/s",
        "vs healthy",
        "p99 ms @1500/s",
        "vs healthy",
        "errors",
    ]
    rows = []
    for system in systems:
        if system not in ("shadowproxy", "nginx-mirror"):
            continue
        for shadow in BAD_SHADOWS:
            if not any(r["system"] == system and r["scenario"] == shadow for r in runs):
                continue
            rows.append([system, SHADOW_LABELS[shadow], *_bad_cells(runs, system, shadow)])
    return table(header, rows)


def _bad_cells(runs: Sequence[Run], system: str, shadow: str) -> list[str]:
    cells = []
    for load, metric, spec in (
        ("c64", "rps", ",.0f"),
        ("r500", "p99_ms", ".3f"),
        ("r1500", "p99_ms", ".3f"),
    ):
        bad = by_round(runs, system, shadow, load, metric)
        good = by_round(runs, system, "healthy", load, metric)
        value = fmt(stat(list(bad.values())), spec)
        if load != "c64":
            value = latency_cell(runs, system, shadow, load, metric)
        cells += [value, fmt(paired(bad, good, change_pct), "+.0f", "%")]
    errors = sum(r["errors"] for r in runs if r["system"] == system and r["scenario"] == shadow)
    return [*cells, f"{errors:,}"]


# --- targets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    op: Callable[[float, float], bool]
    symbol: str
    limit: float
    spec: str
    unit: str

    def text(self) -> str:
        return f"{self.symbol} {self.limit:{self.spec}}{self.unit}"


def at_least(limit: float, spec: str, unit: str) -> Goal:
    return Goal(operator.ge, ">=", limit, spec, unit)


def at_most(limit: float, spec: str, unit: str) -> Goal:
    return Goal(operator.le, "<=", limit, spec, unit)


def below(limit: float, spec: str, unit: str) -> Goal:
    return Goal(operator.lt, "<", limit, spec, unit)


def above(limit: float, spec: str, unit: str) -> Goal:
    return Goal(operator.gt, ">", limit, spec, unit)


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    passed: bool | None
    """None: not measured in this run."""
    flags: str = ""
    """``*``/``~`` when a fixed-rate run behind the figure was overloaded or the load
    generator lagged: the verdict is then weak."""


def evaluate(name: str, goal: Goal, value: Stat | None, flags: str = "") -> Target:
    """The median decides; the range is shown so a borderline result reads as one."""
    if value is None:
        return Target(name, goal.text(), "not measured", None)
    measured = fmt(value, goal.spec, goal.unit)
    return Target(name, goal.text(), measured, goal.op(value.median, goal.limit), flags)


def cell_flags(runs: Sequence[Run], *cells: tuple[str, str, str]) -> str:
    """Flags of the (system, scenario, load) cells a comparison is made of."""
    chosen = [r for r in runs if (r["system"], r["scenario"], r["load"]) in cells]
    flags = OVERLOADED if any(_overloaded(r) for r in chosen) else ""
    return flags + (GENERATOR_BEHIND if any(r.get("keeping_up") is False for r in chosen) else "")


def targets(runs: Sequence[Run]) -> list[Target]:
    """The targets of issue 6, for shadowproxy with recording on."""
    sp = "shadowproxy"
    found = [
        evaluate(
            f"req/s vs nginx-mirror, {conns} conns",
            at_least(0.5, ".2f", "x"),
            vs_healthy(runs, sp, "nginx-mirror", load, "rps", ratio),
        )
        for load, conns in (("c16", 16), ("c64", 64))
    ]
    found += [
        evaluate(
            "CPU per 1k requests @1500/s",
            at_most(0.25, ".3f", " s"),
            series(runs, sp, "healthy", "r1500", "cpu_s_per_1k"),
        ),
        *(
            evaluate(
                f"added {metric[:3]} vs direct @500/s",
                below(limit, ".3f", " ms"),
                vs_healthy(runs, sp, "direct", "r500", metric, difference),
                cell_flags(runs, (sp, "healthy", "r500"), ("direct", "healthy", "r500")),
            )
            for metric, limit in (("p50_ms", 0.5), ("p99_ms", 1.0))
        ),
    ]
    for shadow in BAD_SHADOWS:
        found += _bad_shadow_targets(runs, shadow)
    rss = peak_rss(runs, sp, ["healthy", *BAD_SHADOWS])
    return [*found, evaluate("peak RSS, any scenario", below(60, ".1f", " MB"), rss)]


def _bad_shadow_targets(runs: Sequence[Run], shadow: str) -> list[Target]:
    def changed(load: str, metric: str) -> Stat | None:
        bad = by_round(runs, "shadowproxy", shadow, load, metric)
        return paired(bad, by_round(runs, "shadowproxy", "healthy", load, metric), change_pct)

    label = SHADOW_LABELS[shadow]
    return [
        evaluate(
            f"{label} shadow: p99 @500/s change",
            below(10, "+.0f", "%"),
            changed("r500", "p99_ms"),
            cell_flags(runs, ("shadowproxy", shadow, "r500"), ("shadowproxy", "healthy", "r500")),
        ),
        evaluate(
            f"{label} shadow: req/s (64 conns) change",
            above(-5, "+.0f", "%"),
            changed("c64", "rps"),
        ),
    ]


def targets_table(found: Sequence[Target]) -> list[str]:
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    rows = [[t.name, t.goal, t.measured, verdict[t.passed] + t.flags] for t in found]
    return table(["target (shadowproxy, recording on)", "goal", "measured", "result"], rows)


# --- notes and the whole report -------------------------------------------------------


def generator_notes(runs: Sequence[Run]) -> list[str]:
    """Could loadgen hold its schedule (against direct at 1,500 req/s, and anywhere), and
    how noisy was its own timing?"""
    notes = []
    for run in runs:
        if (run["system"], run["load"]) == ("direct", "r1500"):
            held = "held" if run.get("keeping_up") else f"did NOT hold ({run.get('why_not')})"
            notes.append(
                f"round {run['round']}: loadgen {held} 1,500 req/s against direct "
                f"(answered {run['rps']:,.0f} req/s, {_lag(run, 'p99'):.2f} ms hand-out lag "
                f"p99, {run.get('raw', {}).get('generator_cpu_share', 0.0):.0%} of a core)"
            )
    notes += [
        f"{_where(run)}: loadgen fell behind ({run['why_not']}); latencies there are upper bounds"
        for run in runs
        if run.get("keeping_up") is False and (run["system"], run["load"]) != ("direct", "r1500")
    ]
    lags = stat([_lag(run, "p99") for run in runs if run.get("rate")])
    if lags is not None:
        notes.append(
            f"loadgen's own hand-out lag p99 over fixed-rate runs: median {lags.median:.2f} ms "
            f"(max {lags.high:.2f} ms); that is the machine's scheduling noise, and p99 "
            "differences smaller than it are not meaningful"
        )
    return notes


def _lag(run: Run, point: str) -> float:
    lag: float = run.get("raw", {}).get("dispatch_lag_ms", {}).get(point, 0.0)
    return lag


def overload_notes(runs: Sequence[Run]) -> list[str]:
    """Fixed-rate runs the system could not keep up with: latency there is queueing."""
    return [
        f"{_where(run)}: answered {run['rps']:,.0f} of {run['rate']:,.0f} req/s: overloaded, "
        "so its latencies measure a growing queue"
        for run in runs
        if _overloaded(run)
    ]


def error_notes(runs: Sequence[Run]) -> list[str]:
    return [
        f"{_where(run)}: {run['errors']:,} failed or unfinished requests, {run['ok']:,} answered"
        for run in runs
        if run["errors"]
    ]


def _where(run: Run) -> str:
    return f"round {run['round']} {run['system']}/{run['scenario']}/{run['load']}"


def render(runs: Sequence[Run], systems: Sequence[str], notes: Sequence[str]) -> str:
    rounds = len({r["round"] for r in runs})
    spread = f"median (min-max) of {rounds} rounds" if rounds > 1 else "one round"
    parts = [
        f"### Healthy shadow ({spread})",
        *healthy_table(runs, systems),
        "",
        "### Against direct and NGINX (paired within each round)",
        *comparison_table(runs, systems),
        "",
        "### Bad shadows: production traffic vs the same system with a healthy shadow",
        *bad_shadow_table(runs, systems),
        "",
        "### Targets",
        *targets_table(targets(runs)),
    ]
    all_notes = [LEGEND, *notes, *generator_notes(runs), *overload_notes(runs), *error_notes(runs)]
    if all_notes:
        parts += ["", "Notes:", *(f"- {note}" for note in all_notes)]
    return "\n".join(parts)


def medians(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per cell and metric: median, min, max and rounds, for the JSON output."""
    cells = sorted({(r["system"], r["scenario"], r["load"]) for r in runs})
    out = []
    for system, scenario, load in cells:
        entry: dict[str, Any] = {"system": system, "scenario": scenario, "load": load}
        for metric in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k", "rss_mb", "errors"):
            value = series(runs, system, scenario, load, metric)
            if value is not None:
                entry[metric] = {
                    "median": value.median,
                    "min": value.low,
                    "max": value.high,
                    "n": value.n,
                }
        out.append(entry)
    return out
