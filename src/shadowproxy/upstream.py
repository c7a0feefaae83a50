"""HTTP client side: connection pools and the shadow fetch.

Production and every shadow get their own ``ClientSession`` and connector, so a
black-holed shadow holding all its connections cannot take one from production.
Sessions never decompress (production's bytes go back to the client unchanged), never
keep cookies and never add headers the client did not send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from shadowproxy.config import PoolConfig, ShadowConfig
from shadowproxy.records import ShadowOutcome, ShadowResult

# aiohttp would add these when absent; a transparent proxy must not.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type")


def _session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


def production_session(pool: PoolConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=pool.max_connections,
        limit_per_host=0,
        keepalive_timeout=pool.keepalive_timeout_s,
        ttl_dns_cache=300,
    )
    return _session(connector)


def shadow_session(shadow: ShadowConfig) -> aiohttp.ClientSession:
    # One connection per allowed copy: the in-flight bound is also the socket bound.
    connector = aiohttp.TCPConnector(
        limit=shadow.max_in_flight, keepalive_timeout=30.0, ttl_dns_cache=300
    )
    return _session(connector)


def upstream_url(base: str, raw_path: str) -> URL:
    """The upstream URL for a request: its raw path and query, byte for byte."""
    return URL(base + raw_path, encoded=True)


async def read_capped(stream: aiohttp.StreamReader, cap: int) -> tuple[bytes, bool]:
    """Read a body up to ``cap`` bytes; ``(bytes, truncated)``. Stops reading at the cap."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.readany()
        if not chunk:
            return b"".join(chunks), False
        size += len(chunk)
        if size > cap:
            chunks.append(chunk[: cap - (size - len(chunk))])
            return b"".join(chunks), True
        chunks.append(chunk)


async def chain(head: bytes, rest: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """A request body already partly read: what was read, then the rest as it arrives."""
    if head:
        yield head
    async for chunk in rest.iter_any():
        yield chunk


async def fetch_shadow(
    session: aiohttp.ClientSession,
    url: URL,
    method: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout_s: float,
    capture_bytes: int,
) -> ShadowResult:
    """One shadow copy, its failure turned into data. Never raises (but for cancellation)."""
    started = time.perf_counter()
    status: int | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            ) as response:
                status = response.status
                content_type = response.headers.get("Content-Type")
                captured, truncated = await read_capped(response.content, capture_bytes)
    except TimeoutError:
        return _failed("timeout", status, started, f"no complete answer within {timeout_s:g}s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return _failed("error", status, started, _describe(exc))
    latency = (time.perf_counter() - started) * 1000.0
    return ShadowResult("ok", status, latency, None, captured, truncated, content_type)


def _failed(outcome: ShadowOutcome, status: int | None, started: float, error: str) -> ShadowResult:
    latency = (time.perf_counter() - started) * 1000.0
    return ShadowResult(outcome, status, latency, error, b"", False, None)


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:500]
