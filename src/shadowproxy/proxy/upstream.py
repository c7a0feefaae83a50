"""Client side: connection pools per upstream, and the shadow fetch.

Calls go through ``shadowproxy.http.client``, a lean HTTP/1.1 client: about a quarter of the
CPU of aiohttp's client per call, which was half of the proxy's CPU. Production
upstreams share a pool per origin; every shadow gets a pool of its own, sized by its
``max_in_flight``, so a black-holed shadow holding all its connections cannot take one
from production. Bytes pass through undecoded and no header the client did not send is
added (but ``Host`` and body framing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from shadowproxy.errors import ShadowproxyError, describe
from shadowproxy.http.client import Pool
from shadowproxy.records import ShadowOutcome, ShadowResult


def origin(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of a validated ``scheme://host[:port]`` URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    assert parts.hostname is not None  # config validation guarantees a host
    return parts.hostname, parts.port or (443 if tls else 80), tls


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of a header, by case-insensitive name."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def header_list(headers: list[tuple[str, str]], name: str) -> str | None:
    """Every value of a list header (``Content-Encoding``), joined as one; None when absent.
    A header sent as several lines means the same as one line with commas."""
    values = [value for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


class Pools:
    """Every open upstream pool of one server, so none is left open at the end.

    Which pool serves what is decided in ``shadowproxy.proxy.runtime``: production routes on
    one origin share a pool, each shadow has its own, and a reload keeps the pools
    whose settings did not change.
    """

    def __init__(self) -> None:
        self._open: set[Pool] = set()

    def open(self, url: str, max_connections: int, keepalive_timeout_s: float) -> Pool:
        host, port, tls = origin(url)
        pool = Pool(
            host,
            port,
            max_connections=max_connections,
            keepalive_timeout_s=keepalive_timeout_s,
            ssl=tls or None,
        )
        self._open.add(pool)
        return pool

    async def close(self, pools: Iterable[Pool] | None = None) -> None:
        """Close ``pools`` (by default every one still open)."""
        for pool in list(self._open if pools is None else pools):
            self._open.discard(pool)
            await pool.close()


async def fetch_shadow(
    pool: Pool,
    method: str,
    target: str,
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
            response = await pool.request(method, target, headers, body)
            status = response.status
            content_type = header(response.headers, "content-type")
            encoding = header_list(response.headers, "content-encoding")
            try:
                captured, truncated = await response.read_capped(capture_bytes)
            finally:
                response.release()
    except TimeoutError:
        return _failed("timeout", status, started, f"no complete answer within {timeout_s:g}s")
    except (ShadowproxyError, OSError, ValueError) as exc:
        return _failed("error", status, started, describe(exc))
    latency = (time.perf_counter() - started) * 1000.0
    return ShadowResult(
        outcome="ok", status=status, latency_ms=latency, error=None, body=captured,
        body_truncated=truncated, content_type=content_type, content_encoding=encoding,
    )  # fmt: skip


def _failed(outcome: ShadowOutcome, status: int | None, started: float, error: str) -> ShadowResult:
    latency = (time.perf_counter() - started) * 1000.0
    return ShadowResult(
        outcome=outcome, status=status, latency_ms=latency, error=error, body=b"",
        body_truncated=False, content_type=None,
    )  # fmt: skip
