"""The soak's plan and verdict: phases, the schedule split, counters, bounds.

Run with ``.venv/bin/pytest benchmarks``; the soak itself runs in CI through
``tests/test_soak_short.py``.
"""

from __future__ import annotations

import pytest
from soak_checks import Counters, Rows, Series, checks, parse_counters
from soak_load import Plan, parse_phases


def plan(rate: float = 200.0, duration: float = 20.0, spec: str = "healthy,blackhole,slow") -> Plan:
    return Plan(
        rate=rate,
        duration_s=duration,
        phases=parse_phases(spec, duration),
        warmup_s=3.0,
        rss_bound_mib=64.0,
        fd_tolerance=16,
        connections=64,
        flush_interval_s=1.0,
        breaker=False,
        slow_ms=200.0,
    )


def test_phases_split_the_duration_by_weight() -> None:
    phases = parse_phases("healthy=2,blackhole,slow", 100.0)
    assert [(p.mode, p.start_s, p.end_s) for p in phases] == [
        ("healthy", 0.0, 50.0),
        ("blackhole", 50.0, 75.0),
        ("slow", 75.0, 100.0),
    ]


@pytest.mark.parametrize("spec", ["healthy,down", "healthy=0", "healthy=-1,slow", ""])
def test_bad_phases_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_phases(spec, 10.0)


@pytest.mark.parametrize(("rate", "duration"), [(200.0, 20.0), (500.0, 600.0), (333.0, 7.0)])
def test_every_request_falls_in_exactly_one_phase(rate: float, duration: float) -> None:
    soak = plan(rate, duration, "healthy,blackhole,healthy,slow,healthy")
    assert sum(soak.scheduled(phase) for phase in soak.phases) == soak.total
    for phase in soak.phases:
        first = soak.first_request(phase)
        assert soak.phase_of_request(first) == phase.index
        if first:
            assert soak.phase_of_request(first - 1) == phase.index - 1


EXPOSITION = """\
shadowproxy_requests_total{route="soak",code="200"} 4000.0
shadowproxy_requests_total{route="_unmatched",code="404"} 3.0
shadowproxy_shadow_requests_total{route="soak",shadow="candidate",outcome="ok"} 3000.0
shadowproxy_shadow_requests_total{route="soak",shadow="candidate",outcome="timeout"} 990.0
shadowproxy_shadow_requests_total{route="soak",shadow="candidate",outcome="dropped"} 10.0
shadowproxy_shadow_in_flight{route="soak",shadow="candidate"} 0.0
shadowproxy_records_written_total{kind="pairs"} 3995.0
shadowproxy_records_written_total{kind="feedback"} 7.0
shadowproxy_records_dropped_total{reason="queue_full"} 5.0
shadowproxy_records_dropped_total{reason="shutdown"} 0.0
"""


def test_counters_add_up_only_when_every_decision_is_written_or_dropped() -> None:
    counters = parse_counters(EXPOSITION)
    assert counters.requests == {"200": 4000}
    assert counters.outcomes == {"ok": 3000, "timeout": 990, "dropped": 10}
    assert (counters.written, counters.dropped["queue_full"]) == (3995, 5)
    assert counters.settled(4000)
    assert not parse_counters(EXPOSITION.replace("3995.0", "3994.0")).settled(4000)


def steady(warmup: float, most: float) -> Series:
    return Series(before=warmup / 2, warmup=warmup, min=warmup, max=most, end=warmup)


GROUP_RSS = steady(160.0, 200.0)
FDS = {
    "proxy, everything else": steady(20, 22),
    "writer": steady(9, 9),
    "proxy, production connections": steady(10, 64),
    "proxy, shadow connections": steady(4, 128),
}


def verdicts(
    rows: int = 4000, rss: Series = GROUP_RSS, fds: dict[str, Series] | None = None
) -> dict[str, bool]:
    counters = Counters({"200": 4000}, {"ok": 4000}, rows, {}, 0)
    recorded = Rows(rows, rows, {}, 0)
    found = checks(plan(), 4000, counters, recorded, {"proxy + writer": rss}, FDS | (fds or {}), 0)
    return {check.name: check.passed for check in found}


def test_bounds_pass_and_fail_where_they_should() -> None:
    assert all(verdicts().values())
    grown = verdicts(rss=steady(160.0, 224.5))
    assert not grown["RSS growth after warm-up, proxy + writer"]
    leaking = verdicts(fds={"proxy, everything else": steady(20, 37)})
    assert not leaking["proxy fds besides connections, growth after warm-up"]
    assert not verdicts(fds={"writer": steady(9, 26)})["writer fds, growth after warm-up"]
    unbounded = verdicts(fds={"proxy, shadow connections": steady(4, 129)})
    assert not unbounded["shadow connections"]
    assert not verdicts(rows=3999)["recorded rows + counted drops"]
