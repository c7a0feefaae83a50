"""The report's main aggregation at scale: DuckDB against Spark local mode, same query.

    .venv/bin/python benchmarks/bench_scale.py                        # 10,000,000 rows
    .venv/bin/python benchmarks/bench_scale.py --rows 1000000 --engines duckdb

The query is the report's first and widest scan, ``queries.pair_summary()``: per
(route, shadow) the volume, outcomes, agreement, HTTP errors, comparator and exact
latency quantiles (p50, p95, p99 of both sides). Spark runs the same query rendered in
its dialect (``report.dialect``: DuckDB's ``quantile_cont(x, [..])`` is
``percentile(x, array(..))``, its exact counterpart, linear interpolation between
closest ranks), as ``report --engine spark`` does. Each engine runs in a
process of its own; wall time includes opening the engine (a JVM for Spark), and peak
memory is the largest RSS of that process and its children (Spark's JVM), sampled every
0.1 s. The two answers are compared: counts equal, quantiles within 1e-9 relative.

The dataset is ``bench_report.py``'s (generated once by ``gen_dataset.py``, cached
under ``benchmarks/results/``). Spark needs ``pyspark`` and a JDK 17+ (Debian:
``apt-get install default-jdk-headless``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_report import dataset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

DUCKDB = """
import json, sys
import duckdb
from shadowproxy.report import queries
root = sys.argv[1]
connection = duckdb.connect()
connection.execute("SET memory_limit = '2GB'")
connection.execute("SET enable_progress_bar = false")
for macro in queries.MACROS:
    connection.execute(macro)
source = queries.parquet_source([root + "/pairs/**/*.parquet"], hive=True)
connection.execute(queries.create_view("pairs_raw", source))
connection.execute(f"CREATE VIEW scope AS SELECT * FROM pairs_raw WHERE {queries.CLEAN}")
cursor = connection.execute(queries.pair_summary().sql)
names = [c[0] for c in cursor.description]
rows = [dict(zip(names, row)) for row in cursor.fetchall()]
print(json.dumps(rows, default=str))
"""

SPARK = """
import json, sys
from pyspark.sql import SparkSession
from shadowproxy.report import queries
from shadowproxy.report.dialect import SPARK
root, master = sys.argv[1], sys.argv[2]
spark = (
    SparkSession.builder.master(master)
    .config("spark.ui.enabled", "false")
    .config("spark.driver.memory", "2g")
    .config("spark.sql.session.timeZone", "UTC")
    .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
pairs = spark.read.option("basePath", root + "/pairs").parquet(root + "/pairs")
pairs.createOrReplaceTempView("pairs_raw")
spark.sql(f"CREATE TEMP VIEW scope AS SELECT * FROM pairs_raw WHERE {queries.CLEAN}")
rows = [row.asDict() for row in spark.sql(queries.pair_summary(SPARK).sql).collect()]
spark.stop()
print(json.dumps(rows, default=str))
"""


def tree_rss_kb(pid: int) -> int:
    """RSS of a process and all its descendants (KiB)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        stack.extend(int(child) for child in children)
    return total


def run_engine(name: str, argv: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.1):
                peak = max(peak, tree_rss_kb(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    if code != 0:
        raise SystemExit(f"{name} failed with exit code {code}")
    return {"engine": name, "wall_s": round(wall, 1), "peak_rss_mb": round(peak / 1024, 1),
            "rows": json.loads(text.strip().splitlines()[-1])}  # fmt: skip


def differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    """Fields where the two engines' answers differ (quantiles: beyond 1e-9 relative)."""
    found = []
    for left, right in zip(a, b, strict=True):
        for key in ("rows", "ok", "compared", "agreed", "prod_5xx", "latency_pairs", "role"):
            if left[key] != right[key]:
                found.append(f"{left['route']}/{left['shadow']} {key}: {left[key]} != {right[key]}")
        for key in ("prod_q", "shadow_q"):
            for x, y in zip(left[key] or [], right[key] or [], strict=True):
                if not math.isclose(x, y, rel_tol=1e-9):
                    found.append(f"{left['route']}/{left['shadow']} {key}: {x} != {y}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--body-bytes", type=int, default=300)
    parser.add_argument("--engines", default="duckdb,spark")
    parser.add_argument("--spark-master", default="local[2]")
    args = parser.parse_args()
    root = dataset(args.rows, args.body_bytes)
    results = []
    for engine in args.engines.split(","):
        if engine == "duckdb":
            argv = [sys.executable, "-c", DUCKDB, str(root)]
        else:
            argv = [sys.executable, "-c", SPARK, str(root), args.spark_master]
        result = run_engine(engine, argv)
        results.append(result)
        print(f"{engine}: {args.rows:,} rows in {result['wall_s']} s, "
              f"peak RSS {result['peak_rss_mb']} MB")  # fmt: skip
    if len(results) == 2:
        diff = differences(results[0]["rows"], results[1]["rows"])
        print("answers equal" if not diff else "answers differ:\n" + "\n".join(diff))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    summary = [{k: v for k, v in r.items() if k != "rows"} for r in results]
    out.write_text(json.dumps({"rows": args.rows, "results": summary}, indent=2))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
