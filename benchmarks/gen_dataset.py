"""Write a synthetic shadowproxy recording (the recorder's exact layout) for benchmarks.

    .venv/bin/python benchmarks/gen_dataset.py --rows 1000000 \\
        --out benchmarks/results/dataset-1000000

Two routes (a classifier and a regressor), each with a candidate and a baseline
shadow, ~300-byte bodies, labels in ``feedback/``. ``--rows`` counts recorded pairs
(requests x shadows). The generator itself is ``tests.synthetic``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The generator lives with its main users, the tests; run as a script, this file
# sees only benchmarks/ on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.synthetic import DatasetSpec, RouteSpec, ShadowSpec, generate


def spec(rows: int, body_bytes: int = 300) -> DatasetSpec:
    """Half the rows per route, half of those per shadow; 2% of requests labeled."""
    requests = max(rows // 4, 1)
    labeled = requests // 50
    classifier = RouteSpec(
        "churn",
        requests,
        (
            ShadowSpec(
                "candidate-v2",
                disagree=0.07,
                fixes=labeled // 20,
                breaks=labeled // 50,
                failures={"timeout": requests // 500, "error": requests // 1000},
                latency_shift_ms=4.0,
                segment_disagree={"US": 0.05, "DE": 0.06, "FR": 0.15, "JP": 0.05, "BR": 0.06},
            ),
            ShadowSpec("churn-baseline", role="baseline", disagree=0.004),
        ),
        labeled=labeled,
    )
    regressor = RouteSpec(
        "house-price",
        requests,
        (
            ShadowSpec("price-v3", disagree=0.03, fixes=labeled // 10, latency_shift_ms=-2.0),
            ShadowSpec("price-baseline", role="baseline", disagree=0.002),
        ),
        task="regression",
        labeled=labeled,
    )
    return DatasetSpec(routes=(classifier, regressor), body_bytes=body_bytes, temp_file=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--body-bytes", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    generate(args.out, spec(args.rows, args.body_bytes))
    print(f"wrote {args.rows:,} rows to {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
