"""The promotion decision's error rates, measured by simulation.

    .venv/bin/python benchmarks/aa_decision.py [--datasets 200] [--seed 1]

Prints, for simulated candidates with a known truth (``shadowproxy.report.simulate``):

- A/A (the candidate replicates production): how often it is rejected (the
  false-alarm rate; must be at most 5%), promoted and held;
- at every margin (the candidate exactly as bad as each criterion allows): how often
  it is rejected (Holm: at most 5%) or promoted (intersection-union: at most 5%);
- the coverage of each criterion's one-sided 95% non-inferiority bound (at least 95%)
  in both settings.

CPU-bound, single-threaded pure Python: no quiet machine needed.
"""

from __future__ import annotations

import argparse
import time

from shadowproxy.report import simulate

CRITERIA = ("accuracy", "disagreement", "latency_p99", "error_rate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    scenarios = {
        "A/A (candidate replicates production)": simulate.Scenario(),
        "at every margin": simulate.at_the_margins(),
    }
    started = time.monotonic()
    print(
        f"{args.datasets} simulated datasets per setting, seed {args.seed}, "
        f"{simulate.Scenario().requests:,} requests and {simulate.Scenario().labels:,} "
        "labels each"
    )
    print(
        "| setting | REJECT | PROMOTE | HOLD | "
        + " | ".join(f"{name} bound coverage" for name in CRITERIA)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(CRITERIA))
    for offset, (name, scenario) in enumerate(scenarios.items()):
        outcome = simulate.run(scenario, args.datasets, seed=args.seed + offset)
        shares = " | ".join(f"{100 * outcome.rate(s):.1f}%" for s in ("REJECT", "PROMOTE", "HOLD"))
        coverage = " | ".join(f"{100 * outcome.coverage(c):.1f}%" for c in CRITERIA)
        print(f"| {name} | {shares} | {coverage} |")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
