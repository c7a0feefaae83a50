"""The soak's verdict: the proxy's counters, memory figures, the checks and the tables (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loadgen import percentile
from prometheus_client.parser import text_string_to_metric_families
from soak_load import MIB, Driven, Plan
from soak_sampler import Sample

ROUTE = "soak"


# --- what the proxy counted and recorded ----------------------------------------------


@dataclass(frozen=True)
class Counters:
    """The proxy's own account, from one /metrics scrape."""

    requests: dict[str, int]
    """Client requests on the soak route, by status code sent."""
    outcomes: dict[str, int]
    """Shadow decisions by outcome."""
    written: int
    """Pair rows in complete Parquet files."""
    dropped: dict[str, int]
    """Records dropped on purpose, by reason."""
    in_flight: int

    def settled(self, sent: int) -> bool:
        """Every request counted, decided and either written or dropped; nothing in flight."""
        return (
            sum(self.requests.values()) == sent
            and sum(self.outcomes.values()) == sent
            and self.written + sum(self.dropped.values()) == sent
            and self.in_flight == 0
        )


def parse_counters(text: str) -> Counters:
    requests: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    written = in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "shadowproxy_requests_total" and labels.get("route") == ROUTE:
                requests[labels["code"]] += int(value)
            elif name == "shadowproxy_shadow_requests_total":
                outcomes[labels["outcome"]] += int(value)
            elif name == "shadowproxy_records_written_total" and labels.get("kind") == "pairs":
                written += value
            elif name == "shadowproxy_records_dropped_total":
                dropped[labels["reason"]] += int(value)
            elif name == "shadowproxy_shadow_in_flight":
                in_flight += value
    return Counters(dict(requests), dict(outcomes), int(written), dict(dropped), int(in_flight))


@dataclass(frozen=True)
class Rows:
    total: int
    distinct_request_ids: int
    by_phase: dict[int, dict[str, int]]
    """Phase index -> shadow outcome -> rows."""
    unattributed: int
    """Rows whose query names no phase (none expected)."""


# --- figures and checks (pure) --------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    bound: str
    measured: str
    passed: bool


@dataclass(frozen=True)
class Series:
    """One sampled figure: before the load, at the end of the warm-up, its least and most
    after the warm-up, and at the end (the last sample under load)."""

    before: float
    warmup: float
    min: float
    max: float
    end: float

    @property
    def growth(self) -> float:
        return self.max - self.warmup


def series(samples: Sequence[Sample], warmup_s: float, value: Callable[[Sample], float]) -> Series:
    """``samples``: the sampler's, the first taken before the load."""
    before, during = samples[0], samples[1:] or samples[:1]
    warm = [s for s in during if s.t_s <= warmup_s] or during[:1]
    after = [value(s) for s in during if s.t_s > warmup_s] or [value(during[-1])]
    return Series(
        before=value(before),
        warmup=value(warm[-1]),
        min=min(after),
        max=max(after),
        end=value(during[-1]),
    )


def mib(kib: int) -> float:
    return round(kib / MIB, 1)


RSS: dict[str, Callable[[Sample], float]] = {
    "proxy": lambda s: mib(s.proxy_rss_kib),
    "writer": lambda s: mib(s.writer_rss_kib),
    "proxy + writer": lambda s: mib(s.proxy_rss_kib + s.writer_rss_kib),
}
FDS: dict[str, Callable[[Sample], float]] = {
    "proxy, all": lambda s: s.proxy_fds,
    "proxy, client connections": lambda s: s.client_conns,
    "proxy, production connections": lambda s: s.production_conns,
    "proxy, shadow connections": lambda s: s.shadow_conns,
    "proxy, everything else": lambda s: s.other_fds,
    "writer": lambda s: s.writer_fds,
}


def figures(
    samples: Sequence[Sample], warmup_s: float
) -> tuple[dict[str, Series], dict[str, Series]]:
    """RSS (MiB) and fds, each by what it counts."""
    rss = {name: series(samples, warmup_s, value) for name, value in RSS.items()}
    fds = {name: series(samples, warmup_s, value) for name, value in FDS.items()}
    return rss, fds


def checks(
    plan: Plan,
    answered: int,
    counters: Counters,
    rows: Rows,
    rss: dict[str, Series],
    fds: dict[str, Series],
    exit_code: int | None,
) -> list[Check]:
    sent = plan.total
    dropped = sum(counters.dropped.values())
    group, other, writer = rss["proxy + writer"], fds["proxy, everything else"], fds["writer"]
    production, shadow = fds["proxy, production connections"], fds["proxy, shadow connections"]
    tolerance = plan.fd_tolerance
    return [
        Check(
            "every request answered 2xx by production",
            f"{sent:,}",
            f"{answered:,}",
            answered == sent,
        ),
        Check(
            "every request counted by the proxy",
            f"{sent:,} with 200",
            f"{counters.requests.get('200', 0):,} of {sum(counters.requests.values()):,}",
            counters.requests.get("200", 0) == sent == sum(counters.requests.values()),
        ),
        Check(
            "one shadow decision per request",
            f"{sent:,}",
            f"{sum(counters.outcomes.values()):,}",
            sum(counters.outcomes.values()) == sent,
        ),
        Check(
            "recorded rows + counted drops",
            f"{sent:,}",
            f"{rows.total:,} + {dropped:,}",
            rows.total + dropped == sent,
        ),
        Check(
            "rows read back = rows the writer counted, no duplicates",
            f"{counters.written:,}",
            f"{rows.total:,} ({rows.distinct_request_ids:,} distinct ids, "
            f"{rows.unattributed} without a phase)",
            rows.total == counters.written == rows.distinct_request_ids and not rows.unattributed,
        ),
        Check(
            "RSS growth after warm-up, proxy + writer",
            f"<= {plan.rss_bound_mib:g} MiB",
            f"{group.growth:+.1f} MiB ({group.warmup:.1f} -> max {group.max:.1f})",
            group.growth <= plan.rss_bound_mib,
        ),
        Check(
            "proxy fds besides connections, growth after warm-up",
            f"<= {tolerance}",
            f"{other.growth:+.0f} ({other.warmup:.0f} -> max {other.max:.0f})",
            other.growth <= tolerance,
        ),
        Check(
            "writer fds, growth after warm-up",
            f"<= {tolerance}",
            f"{writer.growth:+.0f} ({writer.warmup:.0f} -> max {writer.max:.0f})",
            writer.growth <= tolerance,
        ),
        Check(
            "production connections (one per request in flight)",
            f"<= {plan.connections} client connections",
            f"max {production.max:.0f}",
            production.max <= plan.connections,
        ),
        Check(
            "shadow connections",
            f"<= max_in_flight {plan.max_in_flight}",
            f"max {shadow.max:.0f}",
            shadow.max <= plan.max_in_flight,
        ),
        Check("proxy exit status after SIGTERM", "0", str(exit_code), exit_code == 0),
    ]


def ms(values: Sequence[float], q: float) -> float:
    return round(percentile(values, q) * 1000.0, 3)


def phase_rows(
    plan: Plan, driven: Driven, samples: Sequence[Sample], rows: Rows
) -> list[dict[str, Any]]:
    out = []
    for phase in plan.phases:
        load = driven.loads[phase.index]
        ordered = sorted(load.latencies)
        during = [s for s in samples[1:] if plan.phase_at(s.t_s) == phase.index]
        during = during or list(samples[-1:])
        out.append(
            {
                "phase": phase.name,
                "mode": phase.mode,
                "seconds": round(phase.end_s - phase.start_s, 3),
                "requests": plan.scheduled(phase),
                "answered": load.answered,
                "errors": load.status_errors + load.socket_errors,
                "p50_ms": ms(ordered, 0.5),
                "p99_ms": ms(ordered, 0.99),
                "max_ms": ms(ordered, 1.0),
                "rows": rows.by_phase.get(phase.index, {}),
                "proxy_rss_max_mib": max(mib(s.proxy_rss_kib) for s in during),
                "writer_rss_max_mib": max(mib(s.writer_rss_kib) for s in during),
                "proxy_fds_max": max(s.proxy_fds for s in during),
                "shadow_conns_max": max(s.shadow_conns for s in during),
            }
        )
    return out


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def series_table(what: str, figures: dict[str, dict[str, float]], fmt: str) -> str:
    return table(
        [what, "before load", "warm-up", "min after", "max after", "end", "max - warm-up"],
        [
            [name, *(format(s[key], fmt) for key in ("before", "warmup", "min", "max", "end")),
             format(s["max"] - s["warmup"], "+" + fmt)]
            for name, s in figures.items()
        ],
    )  # fmt: skip


def render(result: dict[str, Any]) -> str:
    """The markdown tables: per phase, RSS, fds, accounting, checks."""
    phases = table(
        ["phase", "s", "requests", "answered", "p50 ms", "p99 ms", "max ms",
         "shadow outcomes (rows)", "proxy RSS max MiB", "writer RSS max MiB", "proxy fds max",
         "shadow conns max"],
        [
            [p["phase"], f"{p['seconds']:g}", f"{p['requests']:,}", f"{p['answered']:,}",
             f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}", f"{p['max_ms']:.1f}",
             ", ".join(f"{k} {v:,}" for k, v in sorted(p["rows"].items())) or "-",
             f"{p['proxy_rss_max_mib']:.1f}", f"{p['writer_rss_max_mib']:.1f}",
             p["proxy_fds_max"], p["shadow_conns_max"]]
            for p in result["phases"]
        ],
    )  # fmt: skip
    a = result["accounting"]
    dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(a["dropped"].items()) if v) or "none"
    accounting = table(
        ["requests sent", "answered 2xx", "counted by the proxy", "shadow decisions",
         "rows recorded", "records dropped", "rows + dropped"],
        [[f"{a['sent']:,}", f"{a['answered']:,}", f"{sum(a['requests'].values()):,}",
          f"{sum(a['outcomes'].values()):,}", f"{a['rows']:,}", dropped,
          f"{a['rows'] + sum(a['dropped'].values()):,}"]],
    )  # fmt: skip
    verdicts = table(
        ["check", "bound", "measured", "result"],
        [[c["name"], c["bound"], c["measured"], "PASS" if c["passed"] else "FAIL"]
         for c in result["checks"]],
    )  # fmt: skip
    rss = series_table("RSS MiB", result["rss_mib"], ".1f")
    fds = series_table("open fds", result["fds"], ".0f")
    return "\n\n".join([phases, rss, fds, accounting, verdicts])
