"""Time ``shadowproxy report`` on a large synthetic recording and measure its peak RSS.

    .venv/bin/python benchmarks/bench_report.py                 # 1,000,000 rows
    .venv/bin/python benchmarks/bench_report.py --rows 200000 --runs 3

The dataset is generated once (``benchmarks/gen_dataset.py``) and cached under
``benchmarks/results/`` (gitignored). Each run is a fresh ``python -m shadowproxy
report`` subprocess with a segment breakdown (so every request body is parsed once)
and the HTML and JSON outputs; wall time is measured around it and peak RSS is the
child's ``ru_maxrss`` from ``resource.getrusage(RUSAGE_CHILDREN)``. The target on a
2-core machine: 1,000,000 rows in under 20 s with a peak RSS under 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_SECONDS = 20.0
TARGET_RSS_MB = 1536.0


def dataset(rows: int, body_bytes: int) -> Path:
    """The cached dataset, generated when missing (a marker file says it is complete)."""
    root = RESULTS / f"dataset-{rows}-{body_bytes}b"
    marker = root / ".complete"
    if not marker.exists():
        command = [
            sys.executable,
            str(HERE / "gen_dataset.py"),
            "--rows",
            str(rows),
            "--body-bytes",
            str(body_bytes),
            "--out",
            str(root),
        ]
        subprocess.run(command, check=True)
        marker.write_text("ok\n")
    return root


def run_once(root: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one report run in a child process.

    ``RUSAGE_CHILDREN`` reports the largest RSS of any waited-for child, so each run
    happens in its own intermediate process and reports back only its child's peak.
    """
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "wall = time.perf_counter() - t\n"
        "print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    report = [
        sys.executable,
        "-m",
        "shadowproxy",
        "report",
        str(root),
        "--segment",
        "$.instances[0].country",
        "--out",
        str(out / "report.html"),
        "--json",
        str(out / "summary.json"),
    ]
    done = subprocess.run(
        [sys.executable, "-c", probe, *report], check=True, capture_output=True, text=True
    )
    wall, rss_kb = done.stdout.split()
    return float(wall), int(rss_kb) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--body-bytes", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = dataset(args.rows, args.body_bytes)
    size_mb = sum(f.stat().st_size for f in root.rglob("*.parquet")) / 2**20
    out = RESULTS / "report-output"
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_once(root, out) for _ in range(args.runs)]
    best_wall = min(w for w, _r in runs)
    peak_rss = max(r for _w, r in runs)
    result = {
        "rows": args.rows,
        "body_bytes": args.body_bytes,
        "dataset_mb": round(size_mb, 1),
        "cpus": os.cpu_count(),
        "wall_s": [round(w, 2) for w, _r in runs],
        "peak_rss_mb": [round(r, 1) for _w, r in runs],
        "pass": best_wall < TARGET_SECONDS and peak_rss < TARGET_RSS_MB,
    }
    (RESULTS / "bench_report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.rows:,} rows ({size_mb:.0f} MB of Parquet, {os.cpu_count()} CPUs): "
        f"report in {best_wall:.2f} s (runs: {', '.join(f'{w:.2f}' for w, _r in runs)}), "
        f"peak RSS {peak_rss:.0f} MB; target < {TARGET_SECONDS:.0f} s and "
        f"< {TARGET_RSS_MB:.0f} MB: {'PASS' if result['pass'] else 'FAIL'}"
    )
    print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
