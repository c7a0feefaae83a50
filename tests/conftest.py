from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client that changes nothing it sends or receives."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
