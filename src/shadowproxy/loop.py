"""The one event-loop runner: every entry point (serve, the supervisor, the demo, the
example servers, the benchmarks) starts its loop here, so the choice of uvloop is made
in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (Linux, macOS), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
