"""What does a route's ``monitor:`` block cost production traffic?

::

    python benchmarks/bench_monitor.py [--rounds 3] [--duration 8] [--rate 400] [--sample-rate 1.0]

The same proxy config twice, with and without ``monitor:`` (two features, two
invariants; every answer watched unless ``--sample-rate`` says less), in two scenarios:

* ``pairs``: one shadow takes every request, so the monitor adds only the ``watched``
  mark on the event loop and the parsing in the writer process;
* ``telemetry``: no shadow, so every watched request becomes an ``Observation`` shipped
  to the writer: the most the monitor can add to the event loop.

``--writer`` measures instead the writer's CPU time per watched pair (parsing, invariants,
metrics) next to the comparison of the same pair, in this process, no load.

Each run: a fixed rate (open loop, ``loadgen.py``: production latency p50/p99) and the
maximum rate (``wrk`` when installed, else ``loadgen.py`` closed loop). Systems take
turns load by load within a round (A B A B), because the machine is shared. Prints the
medians over rounds and the on/off ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from drivers import Load, run_load
from procs import Children, free_port, wait_for_http
from upstreams import start_upstreams

MONITOR = {
    "sample_rate": 1.0,
    "features": [
        {"name": "f0", "path": "$.instances[*][0]", "kind": "numeric"},
        {"name": "kind", "path": "$.parameters.request_kind", "kind": "categorical"},
    ],
    "invariants": [
        {"name": "twelve", "target": "request", "path": "$.instances[*]", "length": 12},
        {"name": "probs", "target": "prediction", "sum": 1.0, "tolerance": 1e-3},
    ],
}
SYSTEMS = ("monitor-off", "monitor-on")
SCENARIOS = ("pairs", "telemetry")


def config(listen: int, admin: int, production: str, shadow: str, scenario: str, system: str,
           recording: Path, sample_rate: float) -> dict[str, Any]:  # fmt: skip
    route: dict[str, Any] = {
        "name": "bench",
        "match": {"path_prefix": "/"},
        "production": {"url": production, "timeout_s": 10},
        "shadows": [{"name": "shadow", "url": shadow, "sample_rate": 1.0}]
        if scenario == "pairs"
        else [],
        "compare": {"prediction": "kserve-v1"},
    }
    if system == "monitor-on":
        route["monitor"] = {**MONITOR, "sample_rate": sample_rate}
    return {
        "listen": f"127.0.0.1:{listen}",
        "admin_listen": f"127.0.0.1:{admin}",
        "recording": {"dir": str(recording)},
        "drain_timeout_s": 2,
        "shutdown_timeout_s": 2,
        "routes": [route],
    }


def start(
    children: Children, upstreams: Any, scenario: str, system: str, sample_rate: float
) -> tuple[str, Any]:
    name = f"{system}-{scenario}"
    listen, admin = free_port(), free_port()
    path = children.workdir / f"{name}.yaml"
    recording = children.workdir / f"recording-{name}"
    document = config(listen, admin, upstreams.production, upstreams.shadows["healthy"],
                      scenario, system, recording, sample_rate)  # fmt: skip
    path.write_text(json.dumps(document))
    argv = [sys.executable, "-m", "shadowproxy", "--log-level", "warning", "serve"]
    child = children.start(name, [*argv, "--config", str(path)])
    wait_for_http(f"http://127.0.0.1:{admin}/readyz", child)
    return f"http://127.0.0.1:{listen}", child


def writer_cost(repeat: int = 20_000) -> None:
    """Microseconds of writer CPU per pair: the comparison, and the monitor's work."""
    import time

    from prometheus_client import CollectorRegistry
    from upstreams import REQUEST_BODY, RESPONSE_BODY

    from shadowproxy.compare import Comparer
    from shadowproxy.config import RouteConfig
    from shadowproxy.metrics import RecorderMetrics
    from shadowproxy.recording.monitoring import RouteWatch, watched_cells
    from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult

    route = RouteConfig.model_validate(
        {
            "name": "bench",
            "match": {"path_prefix": "/"},
            "production": {"url": "http://127.0.0.1:1"},
            "shadows": [{"name": "shadow", "url": "http://127.0.0.1:2"}],
            "compare": {"prediction": "kserve-v1"},
            "monitor": MONITOR,
        }
    )
    watch = RouteWatch.build(route, RecorderMetrics(CollectorRegistry()))
    assert watch is not None
    comparer = Comparer([route])
    request = RequestInfo(
        request_id="r",
        ts=1.0,
        route="bench",
        method="POST",
        path="/",
        query="",
        headers=[],
        body=REQUEST_BODY.encode(),
        body_complete=True,
    )
    answer = RESPONSE_BODY.encode()
    production = ProductionResult(
        status=200,
        latency_ms=1.0,
        error=None,
        body=answer,
        body_truncated=False,
        content_type="application/json",
    )
    shadow = ShadowResult(
        outcome="ok",
        status=200,
        latency_ms=1.0,
        error=None,
        body=answer,
        body_truncated=False,
        content_type="application/json",
    )
    pair = Pair(
        request=request,
        shadow="shadow",
        role="candidate",
        production=production,
        result=shadow,
        watched=True,
        primary=True,
    )
    for name, work in (
        ("compare", lambda: comparer(pair)),
        ("monitor", lambda: watched_cells(watch, pair)),
    ):
        started = time.perf_counter()
        for _ in range(repeat):
            work()
        print(f"{name}: {(time.perf_counter() - started) / repeat * 1e6:.0f} us per pair")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=400.0, help="the fixed rate (req/s)")
    parser.add_argument("--sample-rate", type=float, default=1.0, help="monitor.sample_rate")
    parser.add_argument("--writer", action="store_true", help="writer CPU per pair only")
    args = parser.parse_args()
    if args.writer:
        writer_cost()
        return 0
    wrk = shutil.which("wrk")
    loads = [Load("fixed", 32, args.rate), Load("max", 32)]
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    try:
        with contextlib.ExitStack() as stack, Children(workdir) as children:
            upstreams = start_upstreams(children, stack, shutil.which("nginx"))
            for round_no in range(1, args.rounds + 1):
                for scenario in SCENARIOS:
                    running = {
                        s: start(children, upstreams, scenario, s, args.sample_rate)
                        for s in SYSTEMS
                    }
                    for load in loads:
                        for system in SYSTEMS:  # alternate: A B, then the next load
                            url, _ = running[system]
                            run = run_load(children, load, url, args.duration, wrk)
                            results.setdefault((scenario, load.name, system), []).append(run)
                            print(
                                f"round {round_no} {scenario:9} {load.label:>12} {system:11} "
                                f"{run['rps']:8.0f} req/s  p50 {run['p50_ms']:.2f} ms  "
                                f"p99 {run['p99_ms']:.2f} ms",
                                flush=True,
                            )
                    for _, child in running.values():
                        children.stop(child)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n| scenario | load | metric | monitor off | monitor on | on/off |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for scenario in SCENARIOS:
        for load in loads:
            for metric in ("rps", "p50_ms", "p99_ms"):
                off = statistics.median(
                    r[metric] for r in results[scenario, load.name, "monitor-off"]
                )
                on = statistics.median(
                    r[metric] for r in results[scenario, load.name, "monitor-on"]
                )
                print(
                    f"| {scenario} | {load.label} | {metric} | {off:.2f} | {on:.2f} "
                    f"| {on / off:.3f} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
