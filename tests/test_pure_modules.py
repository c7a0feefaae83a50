"""The pure core must not pull in the I/O stack."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["shadowproxy.routing", "shadowproxy.headers", "shadowproxy.breaker", "shadowproxy.jsonpath",
     "shadowproxy.records", "shadowproxy.config"],
)  # fmt: skip
def test_imports_without_aiohttp(module: str) -> None:
    code = f"import sys, {module}; assert 'aiohttp' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
