"""How ``serve --workers N`` scales: max throughput and CPU per request for each N.

::

    python benchmarks/bench_workers.py [--workers 1,2] [--rounds 3] [--duration 8]

Production and the shadow are nginx on loopback (so they are never the limit), one
shadow at 100% sampling, recording on. Each round starts every worker count fresh and
runs wrk (2 threads, 64 connections) against it, alternating A B A B; CPU is summed
over the whole process tree (supervisor, workers, their writer processes). Prints a
table of medians (min-max) and the speed-up against one worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_proxy import find_tool
from drivers import parse_wrk, wrk_script
from procs import Children, cpu_seconds, free_port, peak_rss_kb, wait_for_http
from systems import shadowproxy_config
from upstreams import PREDICT_PATH, start_upstreams

HERE = Path(__file__).resolve().parent


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (workers and writers are not one process group)."""
    found = [pid]
    for parent in found:
        children = Path(f"/proc/{parent}/task/{parent}/children")
        with contextlib.suppress(OSError):
            found.extend(int(child) for child in children.read_text().split())
    return found


def run(children: Children, wrk: str, url: str, seconds: int, pid: int) -> dict[str, float]:
    pids = tree(pid)
    before = cpu_seconds(pids)
    argv = [wrk, "-t2", "-c64", f"-d{seconds}s", "-s", str(wrk_script(children.workdir)), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pids) - before
    result = parse_wrk(out)
    return {
        "rps": result["rps"],
        "p99_ms": result["p99_ms"],
        "cpu_us_per_request": used / max(result["ok"], 1) * 1e6,
        "rss_mb": peak_rss_kb(pids) / 1024,
        "errors": result["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if nginx is None or wrk is None:
        print("bench_workers needs nginx and wrk (apt-get install nginx wrk)", file=sys.stderr)
        return 1
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    with contextlib.ExitStack() as stack, Children(Path(tempfile.mkdtemp())) as children:
        upstreams = start_upstreams(children, stack, nginx)
        for round_no in range(1, args.rounds + 1):
            for n in counts:
                listen, admin = free_port(), free_port()
                name = f"workers{n}-round{round_no}"
                config = children.workdir / f"{name}.yaml"
                body = shadowproxy_config(
                    listen, admin, upstreams.production, upstreams.shadows["healthy"],
                    children.workdir / f"recording-{name}",
                )  # fmt: skip
                config.write_text(json.dumps(body))
                argv = [sys.executable, "-m", "shadowproxy", "--log-level", "warning", "serve"]
                child = children.start(name, [*argv, "--config", str(config), "--workers", str(n)])
                wait_for_http(f"http://127.0.0.1:{admin}/readyz", child, timeout_s=60)
                time.sleep(1.0)
                url = f"http://127.0.0.1:{listen}{PREDICT_PATH}"
                figures = run(children, wrk, url, args.duration, child.pid)
                results[n].append(figures)
                print(f"round {round_no} workers={n}: {figures}", flush=True)
                child.popen.terminate()
                child.popen.wait(60)
    base = statistics.median(r["rps"] for r in results[counts[0]])
    print("\n| workers | req/s, 64 conns | speed-up | CPU µs/request | p99 ms | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in counts:
        rows = results[n]

        def cell(key: str, rows: list[dict[str, float]] = rows) -> str:
            values = [r[key] for r in rows]
            return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

        rps = statistics.median(r["rps"] for r in rows)
        p99 = statistics.median(r["p99_ms"] for r in rows)
        print(
            f"| {n} | {cell('rps')} | {rps / base:.2f}x | {cell('cpu_us_per_request')} "
            f"| {p99:.1f} | {cell('rss_mb')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
