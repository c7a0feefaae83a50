"""The pure core must not pull in the I/O stack."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "shadowproxy.proxy.routing",
        "shadowproxy.http.headers",
        "shadowproxy.proxy.breaker",
        "shadowproxy.compare",
        "shadowproxy.compare.jsonpath",
        "shadowproxy.records",
        "shadowproxy.config",
        "shadowproxy.validation",
        "shadowproxy.experiments",
        "shadowproxy.experiments.chaos",
        "shadowproxy.experiments.spec",
        "shadowproxy.experiments.assign",
        "shadowproxy.experiments.window",
        "shadowproxy.experiments.guardrails",
        "shadowproxy.experiments.canary",
        "shadowproxy.stats",
        "shadowproxy.stats",
        "shadowproxy.stats.distributions",
    ],
)
def test_imports_without_aiohttp(module: str) -> None:
    code = f"import sys, {module}; assert 'aiohttp' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_serving_process_does_not_load_arrow() -> None:
    """Arrow (tens of MB of RSS) belongs to the writer process and the report only."""
    code = (
        "import sys, shadowproxy.app, shadowproxy.cli, shadowproxy.recording.process; "
        "assert 'pyarrow' not in sys.modules and 'duckdb' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_experiment_logic_stays_pure() -> None:
    """Assignment runs on every request and evaluation in the serving process: no event
    loop, no HTTP client, no Arrow or DuckDB behind them."""
    code = (
        "import sys, shadowproxy.experiments; "
        "loaded = {'asyncio', 'aiohttp', 'pyarrow', 'duckdb', 'rich'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
