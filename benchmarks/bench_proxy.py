"""Benchmark shadowproxy against the client talking to production directly and NGINX mirror.

::

    python benchmarks/bench_proxy.py [--quick] [--rounds N] [--duration S] [--json out.json]

What runs, all on loopback (see ``benchmarks/README.md`` for how to read the output):

    load generator ──► system under test ──► production (nginx, fixed KServe answer)
    (wrk: max req/s;        │
     loadgen.py: fixed      └──copy──► shadow: healthy (nginx) | slow 200 ms | down |
     rates, open loop)                          black-holed (Python, own processes)

Systems: ``direct``, ``shadowproxy`` (recording on), ``shadowproxy-norec``,
``nginx-mirror``. Scenarios: the shadow is healthy, slow, down or black-holed. Every
round runs every scenario; within a scenario the systems take turns load by load
(A B C A B C), because the machine is shared and noisy. Each system is started fresh per
scenario and round; its CPU time and peak RSS come from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import summary
from drivers import LOADS, Load, run_load
from procs import ChildFailed, Children, cpu_seconds, peak_rss_kb
from systems import SYSTEMS, Running, recorded_files, start_system, stop_system
from upstreams import SCENARIOS, Upstreams, start_upstreams

HERE = Path(__file__).resolve().parent
WARMUP_S = 1.0
PAUSE_S = 0.3
"""Between runs, so one system's leftover shadow work settles before the next run."""
STARTUP_S = {"direct": 0.0, "shadowproxy": 1.5, "shadowproxy-norec": 1.5, "nginx-mirror": 0.3}
RUN_OVERHEAD_S = 0.8
"""Per run beyond its duration: starting the load generator, reading /proc, the pause."""


@dataclass(frozen=True)
class Step:
    """One scenario of a round: these systems, each put through these loads in turns."""

    scenario: str
    systems: tuple[str, ...]
    loads: tuple[str, ...]


def make_plan(quick: bool, systems: Sequence[str]) -> list[Step]:
    """Healthy: every system, every load. Bad shadows: the proxies, the loads targets use."""
    plan = [Step("healthy", tuple(systems), tuple(LOADS))]
    bad_loads = ("c64", "r500") if quick else ("c64", "r500", "r1500")
    proxies = tuple(s for s in systems if s in ("shadowproxy", "nginx-mirror"))
    plan += [Step(scenario, proxies, bad_loads) for scenario in SCENARIOS[1:]]
    return plan


def expected_seconds(plan: Sequence[Step], rounds: int, duration_s: float) -> float:
    per_round = 0.0
    for step in plan:
        for system in step.systems:
            per_round += STARTUP_S[system] + (WARMUP_S + RUN_OVERHEAD_S) * (system != "direct")
            per_round += len(step.loads) * (duration_s + RUN_OVERHEAD_S)
    return 3.0 + rounds * per_round


@dataclass
class Bench:
    """What every run needs, and what the runs produce."""

    children: Children
    upstreams: Upstreams
    nginx: str | None
    wrk: str | None
    duration_s: float
    total_runs: int
    started: float = field(default_factory=time.monotonic)
    runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recorded: dict[str, int] = field(default_factory=dict)


# --- one run, one step, one round -----------------------------------------------------


def measure(bench: Bench, round_no: int, scenario: str, running: Running, load: Load) -> None:
    cpu_before = cpu_seconds(running.pids)
    result = run_load(bench.children, load, running.url, bench.duration_s, bench.wrk)
    run: dict[str, Any] = {
        "round": round_no,
        "scenario": scenario,
        "system": running.system,
        "load": load.name,
        "rate": load.rate,
        **result,
        "cpu_s": None,
        "cpu_s_per_1k": None,
        "rss_mb": None,
    }
    if running.pids:
        cpu = cpu_seconds(running.pids) - cpu_before
        run["cpu_s"] = round(cpu, 3)
        run["cpu_s_per_1k"] = round(cpu / result["ok"] * 1000.0, 4) if result["ok"] else None
        run["rss_mb"] = round(peak_rss_kb(running.pids) / 1024.0, 1)
    bench.runs.append(run)
    _progress(bench, run)


def _progress(bench: Bench, run: dict[str, Any]) -> None:
    elapsed = time.monotonic() - bench.started
    cpu = f" cpu {run['cpu_s_per_1k']:.3f} s/1k" if run["cpu_s_per_1k"] is not None else ""
    rss = f" rss {run['rss_mb']:.0f} MB" if run["rss_mb"] is not None else ""
    late = "" if run["keeping_up"] is not False else f"  [generator behind: {run['why_not']}]"
    errors = f" errors {run['errors']:,}" if run["errors"] else ""
    print(
        f"[{len(bench.runs):3d}/{bench.total_runs} {elapsed:5.0f}s] round {run['round']} "
        f"{run['scenario']:9s} {run['system']:17s} {run['load']:5s} "
        f"{run['rps']:8,.0f} req/s  p50 {run['p50_ms']:7.3f} ms  p99 {run['p99_ms']:8.3f} ms"
        f"{cpu}{rss}{errors}{late}",
        flush=True,
    )


def run_step(bench: Bench, round_no: int, step: Step) -> None:
    started: dict[str, Running] = {}
    try:
        for system in step.systems:
            running = _start(bench, round_no, step.scenario, system)
            if running is not None:
                started[system] = running
        for load in step.loads:
            for running in started.values():
                _measure_or_note(bench, round_no, step.scenario, running, LOADS[load])
                time.sleep(PAUSE_S)
    finally:
        for running in started.values():
            stop_system(bench.children, running)
            if running.system == "shadowproxy":
                bench.recorded[f"round {round_no} {step.scenario}"] = recorded_files(running)


def _start(bench: Bench, round_no: int, scenario: str, system: str) -> Running | None:
    try:
        running = start_system(system, scenario, bench.upstreams, bench.children, bench.nginx)
        if running.pids:
            run_load(bench.children, Load("warmup", 16), running.url, WARMUP_S, bench.wrk)
    except ChildFailed as exc:
        bench.notes.append(f"round {round_no}: {system} ({scenario} shadow) did not start: {exc}")
        print(f"!! {system} ({scenario}) did not start: {exc}", flush=True)
        return None
    return running


def _measure_or_note(
    bench: Bench, round_no: int, scenario: str, running: Running, load: Load
) -> None:
    try:
        measure(bench, round_no, scenario, running, load)
    except ChildFailed as exc:
        bench.notes.append(
            f"round {round_no} {running.system}/{scenario}/{load.name} failed: {exc}"
        )
        print(f"!! {running.system}/{scenario}/{load.name} failed: {exc}", flush=True)


# --- the whole benchmark --------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s per run, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 10, quick 3)")
    parser.add_argument("--json", type=Path, help="default benchmarks/results/bench-<time>.json")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    return parser


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)),
        None,
    )


def _tool_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    duration = args.duration if args.duration is not None else 3.0 if args.quick else 10.0
    if rounds < 1 or duration < 1:
        parser.error("--rounds must be at least 1 and --duration at least 1 (seconds)")
    load_at_start = os.getloadavg()[0]
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    systems = [s for s in SYSTEMS if s != "nginx-mirror" or nginx]
    plan = make_plan(args.quick, systems)
    out = args.json or HERE / "results" / f"bench-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    notes = _tool_notes(nginx, wrk)
    total_runs = rounds * sum(len(s.systems) * len(s.loads) for s in plan)
    _print_header(rounds, duration, plan, notes, total_runs)
    # Also SIGINT: a shell starting us in the background would have it ignored.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    interrupted = False
    bench: Bench | None = None
    try:
        with contextlib.ExitStack() as stack, Children(workdir) as children:
            upstreams = start_upstreams(children, stack, nginx)
            bench = Bench(children, upstreams, nginx, wrk, duration, total_runs)
            for round_no in range(1, rounds + 1):
                for step in plan:
                    run_step(bench, round_no, step)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: every child process is stopped; reporting what ran", flush=True)
    except ChildFailed as exc:
        print(f"bench_proxy: an upstream did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep_workdir:
            print(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if bench is None or not bench.runs:
        return 130 if interrupted else 1
    load = f"load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at the end"
    notes += [f"machine: {os.cpu_count()} CPUs, {load}", *bench.notes]
    notes.append(_recording_note(bench.recorded))
    report = summary.render(bench.runs, systems, notes)
    print("\n" + report)
    _write_json(out, args, rounds, duration, plan, bench, notes, report, interrupted)
    print(f"\nfull results: {out}")
    return 130 if interrupted else 0


def _tool_notes(nginx: str | None, wrk: str | None) -> list[str]:
    notes = [f"upstreams: {'nginx (1 worker)' if nginx else 'aiohttp (nginx not installed)'}"]
    if nginx is None:
        notes.append("nginx-mirror skipped: nginx is not installed")
    if wrk is None:
        notes.append("max throughput measured with loadgen.py (closed loop): wrk is not installed")
    else:
        version = _tool_version([wrk, "--version"]).split(" Copyright")[0]
        notes.append(f"max throughput: {version}, 1 thread")
    notes.append("fixed rates: loadgen.py, open loop, 64 connections, latency from the due time")
    return notes


def _recording_note(recorded: dict[str, int]) -> str:
    if any(recorded.values()):
        return f"recording on: shadowproxy wrote {sum(recorded.values())} file(s) to recording.dir"
    return (
        "recording on: no file appeared in recording.dir (is the recorder wired into "
        "`shadowproxy serve`?), so 'shadowproxy' may have measured the serving path alone"
    )


def _print_header(
    rounds: int, duration: float, plan: Sequence[Step], notes: Sequence[str], total_runs: int
) -> None:
    expected = expected_seconds(plan, rounds, duration)
    info = machine()
    print(
        f"bench_proxy: {rounds} round(s), {duration:g} s per run, {total_runs} runs; "
        f"expected time about {expected / 60:.1f} min ({expected:.0f} s)"
    )
    print(f"machine: {info['cpus']} CPUs, load average {info['load_average']} at start")
    for line in notes:
        print(f"  {line}")
    for step in plan:
        print(f"  {step.scenario:9s}: {', '.join(step.systems)} x {', '.join(step.loads)}")
    sys.stdout.flush()


def _write_json(
    out: Path,
    args: argparse.Namespace,
    rounds: int,
    duration: float,
    plan: Sequence[Step],
    bench: Bench,
    notes: Sequence[str],
    report: str,
    interrupted: bool,
) -> None:
    document = {
        "meta": {
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "interrupted": interrupted,
            "quick": args.quick,
            "rounds": rounds,
            "duration_s": duration,
            "machine": machine(),
            "nginx": bench.nginx and _tool_version([bench.nginx, "-v"]),
            "wrk": bench.wrk,
            "upstream_server": bench.upstreams.server,
            "plan": [asdict(step) for step in plan],
            "loads": {name: asdict(load) for name, load in LOADS.items()},
            "recorded_files": bench.recorded,
        },
        "notes": list(notes),
        "medians": summary.medians(bench.runs),
        "targets": [asdict(t) for t in summary.targets(bench.runs)],
        "runs": bench.runs,
        "table": report,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    sys.exit(main())
