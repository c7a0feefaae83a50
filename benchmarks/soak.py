"""Soak: a steady rate for minutes while the shadow turns black-holed, then slow.

::

    python benchmarks/soak.py                       # 500 req/s for 600 s (300,000 requests)
    python benchmarks/soak.py --short               # 200 req/s for 20 s (4 s phases): CI
    python benchmarks/soak.py --rate 500 --duration 600 \\
        --phases healthy,blackhole,healthy,slow,healthy --rss-bound-mib 64

What runs, all on loopback, each in its own process::

    open-loop load ──► shadowproxy serve ──► production (soak_upstream.py, healthy)
    (this process)        │   └─ writer process ──► Parquet in a temp dir
                          └─ every request ──► shadow (soak_upstream.py), switched per
                             phase: healthy | slow (+200 ms) | blackhole (never answers)

The proxy runs as users run it (``python -m shadowproxy serve``), recording on with its
writer process, one shadow at ``sample_rate: 1.0``, ``timeout_s: 1``,
``max_in_flight: 128``. The circuit breaker is set out of reach unless ``--breaker``:
a black-holed shadow then keeps 128 copies hanging and times one out every few
milliseconds, the worst case for memory and file descriptors (with the breaker, a
black hole costs one probe per backoff).

Every second a sampler process (``soak_sampler.py``) reads the proxy's and its
writer's resident memory (``VmRSS``) and open file descriptors (``/proc/<pid>/fd``).
After the load the harness waits until the proxy's counters settle, scrapes
``/metrics``, stops the proxy with SIGTERM and reads the recorded rows back. It passes
when:

* every request got a 2xx from production, and the proxy counted each one;
* every request has exactly one shadow decision, and each decision is a recorded row
  or a counted drop (``shadowproxy_records_dropped_total``); no row is recorded twice;
* the process group's RSS (proxy + writer) never rises more than ``--rss-bound-mib``
  above its level at the end of the warm-up;
* open fds stay flat: the proxy's fds other than connections (listeners, the writer's
  pipes, the event loop's own) and the writer's fds rise at most ``--fd-tolerance``
  above their warm-up level; connections, sorted by port through ``/proc/net/tcp``,
  stay within their bounds: production connections no more than client connections
  (one per request in flight), shadow connections no more than ``max_in_flight``;
* the proxy exits 0 after SIGTERM.

It prints markdown tables and writes JSON to ``benchmarks/results/soak-<time>.json``
(or ``--json``); the exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import loadgen
from procs import Child, ChildFailed, Children, cpu_seconds, free_port, group_pids, wait_for_http
from soak_checks import (
    ROUTE,
    Counters,
    Rows,
    checks,
    figures,
    parse_counters,
    phase_rows,
    render,
)
from soak_load import Driven, Plan, drive, http, parse_phases
from soak_sampler import Ports, Sample, read_samples

from shadowproxy.loop import run_loop

HERE = Path(__file__).resolve().parent
SHADOW = "candidate"
SHADOW_TIMEOUT_S = 1.0
SETTLE_S = 30.0
"""After the load, how long the proxy's counters may take to add up (files close every
``flush_interval_s``)."""
STOP_TIMEOUT_S = 60.0
SAMPLER_START_S = 2.0
"""The load starts this long after the sampler, which first samples the proxy idle."""


# --- the plan ---------------------------------------------------------------------------


PROFILES: dict[str, dict[str, float]] = {
    "full": {"rate": 500, "duration": 600, "warmup": 30, "flush_interval": 5},
    "short": {"rate": 200, "duration": 20, "warmup": 3, "flush_interval": 1},
}
"""``flush_interval``: the short form closes files every second, so the wait for the
counters to add up after the load stays short."""
DEFAULT_PHASES = "healthy,blackhole,healthy,slow,healthy"


def make_plan(args: argparse.Namespace) -> Plan:
    profile = PROFILES["short" if args.short else "full"]

    def pick(name: str) -> float:
        given: float | None = getattr(args, name)
        return profile[name] if given is None else given

    rate, duration, warmup = pick("rate"), pick("duration"), pick("warmup")
    if rate <= 0 or duration < 1:
        raise ValueError(
            f"--rate must be above 0 and --duration at least 1 s, got {rate:g}, {duration:g}"
        )
    phases = parse_phases(args.phases, duration)
    if phases[0].mode != "healthy" or not 0 < warmup < phases[0].end_s:
        raise ValueError(
            f"the warm-up ({warmup:g} s) must end inside the first phase, which must be "
            f"healthy (it is {phases[0].mode}, {phases[0].end_s:g} s)"
        )
    return Plan(
        rate=rate,
        duration_s=duration,
        phases=phases,
        warmup_s=warmup,
        rss_bound_mib=args.rss_bound_mib,
        fd_tolerance=args.fd_tolerance,
        connections=args.connections,
        flush_interval_s=pick("flush_interval"),
        breaker=args.breaker,
        slow_ms=args.slow_ms,
    )


def proxy_config(plan: Plan, ports: Ports, admin: int, recording: Path) -> dict[str, Any]:
    shadow: dict[str, Any] = {
        "name": SHADOW,
        "url": f"http://127.0.0.1:{ports.shadow}",
        "sample_rate": 1.0,
        "timeout_s": SHADOW_TIMEOUT_S,
        "max_in_flight": plan.max_in_flight,
    }
    if not plan.breaker:
        shadow["circuit_breaker"] = {"failures": 1_000_000_000}
    return {
        "listen": f"127.0.0.1:{ports.listen}",
        "admin_listen": f"127.0.0.1:{admin}",
        "recording": {"dir": str(recording), "flush_interval_s": plan.flush_interval_s},
        "drain_timeout_s": 5,
        "shutdown_timeout_s": 5,
        "routes": [
            {
                "name": ROUTE,
                "match": {"path_prefix": "/"},
                "production": {"url": f"http://127.0.0.1:{ports.production}", "timeout_s": 10},
                "shadows": [shadow],
                "compare": {"prediction": "kserve-v1"},
            }
        ],
    }


# --- settling, reading back ---------------------------------------------------------


def settle(admin: str, sent: int) -> tuple[Counters, float]:
    """Scrape until the counters add up (or ``SETTLE_S`` passed); the last scrape and the wait."""
    started = time.monotonic()
    while True:
        counters = parse_counters(http(f"{admin}/metrics").decode())
        waited = time.monotonic() - started
        if counters.settled(sent) or waited > SETTLE_S:
            return counters, waited
        time.sleep(0.25)


def read_rows(recording: Path) -> Rows:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    pairs = recording / "pairs"
    if not pairs.exists():
        return Rows(0, 0, {}, 0)
    dataset = ds.dataset(pairs, format="parquet", partitioning="hive", ignore_prefixes=[".", "_"])
    table = dataset.to_table(columns=["request_id", "query", "shadow_outcome"])
    by_phase: dict[int, dict[str, int]] = {}
    unattributed = 0
    grouped = table.group_by(["query", "shadow_outcome"]).aggregate([("request_id", "count")])
    for row in grouped.to_pylist():
        query, outcome, rows = row["query"] or "", row["shadow_outcome"], row["request_id_count"]
        if not query.startswith("soak_phase="):
            unattributed += rows
            continue
        phase = by_phase.setdefault(int(query.removeprefix("soak_phase=")), {})
        phase[outcome] = phase.get(outcome, 0) + rows
    distinct = pc.count_distinct(table["request_id"]).as_py()
    return Rows(table.num_rows, int(distinct), by_phase, unattributed)


# --- the run --------------------------------------------------------------------------


def start_upstream(children: Children, name: str, plan: Plan) -> int:
    port = free_port()
    argv = [sys.executable, str(HERE / "soak_upstream.py"), "--port", str(port)]
    child = children.start(name, [*argv, "--delay-ms", str(plan.slow_ms)])
    wait_for_http(f"http://127.0.0.1:{port}/_soak/stats", child)
    return port


def stop_gracefully(child: Child) -> tuple[int | None, float]:
    """SIGTERM to the proxy alone, as an orchestrator sends it; its exit status and time."""
    started = time.monotonic()
    os.kill(child.pid, signal.SIGTERM)
    try:
        code: int | None = child.popen.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    return code, round(time.monotonic() - started, 2)


@dataclass(frozen=True)
class Measured:
    """Everything one soak saw."""

    driven: Driven
    samples: list[Sample]
    counters: Counters
    settle_s: float
    rows: Rows
    received: dict[str, int]
    """Requests the shadow received, by the mode it was in."""
    cpu_s: float
    """CPU seconds of the proxy and its writer during the load."""
    exit_code: int | None
    stop_s: float
    proxy_log: str


def run_soak(plan: Plan, children: Children) -> Measured:
    workdir = children.workdir
    production = start_upstream(children, "production", plan)
    shadow = start_upstream(children, "shadow", plan)
    ports, admin = Ports(free_port(), production, shadow), free_port()
    recording = workdir / "recording"
    config = workdir / "soak.yaml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(json.dumps(proxy_config(plan, ports, admin, recording)))
    argv = [sys.executable, "-m", "shadowproxy", "--log-level", "warning", "serve"]
    proxy = children.start("proxy", [*argv, "--config", str(config)])
    admin_url = f"http://127.0.0.1:{admin}"
    wait_for_http(f"{admin_url}/readyz", proxy)
    print(f"soak: {plan.total:,} requests at {plan.rate:g} req/s for {plan.duration_s:g} s")
    t0 = loadgen.clock() + SAMPLER_START_S
    samples = workdir / "samples.jsonl"
    sampler = children.start(
        "sampler",
        [sys.executable, str(HERE / "soak_sampler.py"), "--pid", str(proxy.pid),
         "--ports", f"{ports.listen},{ports.production},{ports.shadow}",
         "--t0", repr(t0), "--until", str(plan.duration_s), "--out", str(samples)],
    )  # fmt: skip
    cpu_before = cpu_seconds(group_pids(proxy.pid))
    driven = run_loop(drive(plan, t0, ports, proxy.pid))
    cpu_s = cpu_seconds(group_pids(proxy.pid)) - cpu_before
    if not proxy.alive():
        raise ChildFailed(f"the proxy exited during the load:\n{proxy.log_tail()}")
    sampler.popen.wait(timeout=STOP_TIMEOUT_S)
    counters, waited = settle(admin_url, plan.total)
    received = json.loads(http(f"http://127.0.0.1:{shadow}/_soak/stats"))["received"]
    exit_code, stop_s = stop_gracefully(proxy)
    return Measured(
        driven=driven,
        samples=read_samples(samples),
        counters=counters,
        settle_s=round(waited, 2),
        rows=read_rows(recording),
        received=received,
        cpu_s=cpu_s,
        exit_code=exit_code,
        stop_s=stop_s,
        proxy_log=proxy.log_tail(20),
    )


def assemble(plan: Plan, run: Measured) -> dict[str, Any]:
    """The JSON document: figures, checks, every sample and the tables."""
    driven, samples, counters, rows = run.driven, run.samples, run.counters, run.rows
    rss, fds = figures(samples, plan.warmup_s)
    answered = sum(load.answered for load in driven.loads)
    verdicts = checks(plan, answered, counters, rows, rss, fds, run.exit_code)
    lag = loadgen.summarize_ms(driven.lags)
    why_not = loadgen.keeping_up(lag["p50"], driven.late_s, driven.generator_cpu_share)
    result: dict[str, Any] = {
        "phases": phase_rows(plan, driven, samples, rows),
        "rss_mib": {name: asdict(figure) for name, figure in rss.items()},
        "fds": {name: asdict(figure) for name, figure in fds.items()},
        "accounting": {
            "sent": plan.total,
            "answered": answered,
            "unanswered": plan.total - answered,
            "requests": counters.requests,
            "outcomes": counters.outcomes,
            "written": counters.written,
            "dropped": counters.dropped,
            "rows": rows.total,
            "distinct_request_ids": rows.distinct_request_ids,
            "settle_s": run.settle_s,
        },
        "shadow_received": run.received,
        "writer_pids": sorted({pid for s in samples for pid in s.writer_pids}),
        "proxy_cpu_s_per_1k": round(run.cpu_s / max(answered, 1) * 1000.0, 4),
        "stop_s": run.stop_s,
        "proxy_log": run.proxy_log,
        "generator": {
            "dispatch_lag_ms": lag,
            "late_s": round(driven.late_s, 3),
            "cpu_share": round(driven.generator_cpu_share, 3),
            "keeping_up": why_not is None,
            "why_not": why_not,
        },
        "checks": [asdict(check) for check in verdicts],
        "passed": all(check.passed for check in verdicts),
        "samples": [asdict(sample) for sample in samples],
    }
    result["table"] = render(result)
    return result


# --- command line ---------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="200 req/s for 20 s, warm-up 3 s (CI)")
    p.add_argument("--rate", type=float, help="requests/s (default 500; --short 200)")
    p.add_argument("--duration", type=float, help="seconds of load (default 600; --short 20)")
    p.add_argument(
        "--warmup", type=float, help="seconds before the RSS baseline (default 30; --short 3)"
    )
    p.add_argument(
        "--phases",
        default=DEFAULT_PHASES,
        help=f"shadow modes in order, optional weights as mode=w (default {DEFAULT_PHASES})",
    )
    p.add_argument(
        "--rss-bound-mib", type=float, default=64.0, help="allowed RSS growth after warm-up"
    )
    p.add_argument(
        "--fd-tolerance",
        type=int,
        default=16,
        help="allowed growth of the fds that are not connections (proxy) and the writer's",
    )
    p.add_argument("--connections", type=int, default=64, help="client keep-alive connections")
    p.add_argument("--slow-ms", type=float, default=200.0, help="the slow shadow's delay")
    p.add_argument("--breaker", action="store_true", help="keep the default circuit breaker")
    p.add_argument(
        "--json", type=Path, help="where to write the JSON (default benchmarks/results/)"
    )
    p.set_defaults(flush_interval=None)
    return p


def meta(plan: Plan, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "argv": list(argv),
        "plan": asdict(plan),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "loadavg": os.getloadavg(),
    }


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        plan = make_plan(args)
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    started = meta(plan, argv)
    # Also SIGINT: a shell starting us in the background would have it ignored.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp, Children(Path(tmp)) as children:
            result = {"meta": started} | assemble(plan, run_soak(plan, children))
    except ChildFailed as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsoak: interrupted; every child process is stopped", file=sys.stderr)
        return 130
    out = args.json or HERE / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(result["table"])
    if not result["generator"]["keeping_up"]:
        print(f"\nnote: the load generator fell behind ({result['generator']['why_not']})")
    print(f"\n{'PASS' if result['passed'] else 'FAIL'}; JSON: {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
