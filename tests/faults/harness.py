"""The proxy under fault: two routes, a leak check, and a client that keeps the details.

Every case runs the real proxy in-process with a collecting sink and two routes:

* ``fault`` (``/v1/models/fault``): the upstream or shadow under test, one shadow ``s``;
* ``healthy`` (``/v1/models/healthy``): a healthy production and shadow, to show that
  the proxy still serves the next request normally after the fault.

Timeouts are short (1 s) so the whole matrix runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from shadowproxy.records import Pair
from tests.faults.upstreams import ANSWER, Behaviour, Faulty, model, serve
from tests.support import RunningProxy, closed_port_url, route, running_proxy, write_config

PRODUCTION_TIMEOUT_S = 1.0
SHADOW_TIMEOUT_S = 1.0
# Production answers through a shadow-side fault must come well before the shadow's
# timeout: anything slower means production waited for the shadow.
FAST_S = SHADOW_TIMEOUT_S / 2

FAULT = "/v1/models/fault:predict"
HEALTHY = "/v1/models/healthy:predict"
BODY = b'{"instances": [[1, 2, 3]]}'


@dataclass
class Reply:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes
    seconds: float


def shadow(url: str) -> dict[str, Any]:
    # The breaker would turn repeated failures into ``skipped``; the matrix wants each
    # fault's own outcome, so it never opens here (tests/test_proxy.py covers it).
    return {
        "name": "s",
        "url": url,
        "timeout_s": SHADOW_TIMEOUT_S,
        "circuit_breaker": {"failures": 1000},
    }


@contextlib.asynccontextmanager
async def upstream(behaviour: Behaviour | None) -> AsyncIterator[Faulty]:
    """A faulty upstream, or for ``None`` a port where nothing listens (refused)."""
    if behaviour is not None:
        async with serve(behaviour) as faulty:
            yield faulty
    else:
        nothing = Faulty(url=closed_port_url())
        nothing.idle.set()
        yield nothing


@dataclass
class Harness:
    proxy: RunningProxy
    session: aiohttp.ClientSession
    healthy: Faulty

    async def post(self, path: str, request_id: str, body: bytes = BODY) -> Reply:
        started = time.perf_counter()
        headers = {"X-Request-Id": request_id, "Content-Type": "application/json"}
        async with self.session.post(self.proxy.url + path, data=body, headers=headers) as resp:
            payload = await resp.read()
            return Reply(
                resp.status,
                resp.reason or "",
                CIMultiDict(resp.headers),
                payload,
                time.perf_counter() - started,
            )

    async def serves_next_request(self, request_id: str = "next") -> None:
        """After the fault: a request on the healthy route gets its answer, and a row."""
        answered = self.healthy.answered
        reply = await self.post(HEALTHY, request_id)
        assert (reply.status, reply.body) == (200, ANSWER), reply
        assert reply.headers["X-Request-Id"] == request_id
        assert self.healthy.answered == answered + 1
        pairs = await self.rows(request_id, 1)
        assert pairs[0].result.outcome == "ok", pairs[0]

    def fault_rows(self) -> list[Pair]:
        return [pair for pair in self.proxy.sink.pairs if pair.request.route == "fault"]

    async def rows(self, request_id: str, count: int) -> list[Pair]:
        """Wait for ``count`` rows of this request (``exactly_one_row_each`` checks there
        are no more, once the proxy has stopped)."""
        async with asyncio.timeout(SHADOW_TIMEOUT_S + 5):
            while len(found := of(self.proxy.sink.pairs, request_id)) < count:
                await self.proxy.sink.wait_for(len(self.proxy.sink.pairs) + 1)
        return found


def slug(case: str) -> str:
    """A test id from a matrix row's name."""
    return "-".join("".join(c if c.isalnum() else " " for c in case).split()).lower()


def of(pairs: list[Pair], request_id: str) -> list[Pair]:
    return [pair for pair in pairs if pair.request.request_id == request_id]


def exactly_one_row_each(pairs: list[Pair], request_ids: list[str]) -> list[Pair]:
    """Every sampled request has exactly one row, and no other request has one."""
    ids = sorted(pair.request.request_id for pair in pairs)
    assert ids == sorted(request_ids), ids
    return [of(pairs, request_id)[0] for request_id in request_ids]


@contextlib.asynccontextmanager
async def fault_proxy(
    tmp_path: Path, production: str, shadow_url: str, **route_extra: Any
) -> AsyncIterator[Harness]:
    """The proxy with the ``fault`` and ``healthy`` routes, and a client session."""
    route_extra.setdefault("timeout_s", PRODUCTION_TIMEOUT_S)
    async with serve(model) as healthy, serve(model) as healthy_shadow:
        routes = [
            route("fault", production, [shadow(shadow_url)], **route_extra),
            route("healthy", healthy.url, [shadow(healthy_shadow.url)]),
        ]
        config = write_config(tmp_path, routes, drain_timeout_s=2, shutdown_timeout_s=1)
        async with running_proxy(config) as proxy:
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                yield Harness(proxy, session, healthy)


# --- leaks ---------------------------------------------------------------------------


def open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


@contextlib.asynccontextmanager
async def no_leaks(settle_s: float = 3.0) -> AsyncIterator[None]:
    """Exactly the file descriptors and tasks open before are open after.

    Wrap everything a case starts (upstreams, proxy, client): it is all stopped by the
    time this checks, so nothing is tolerated. A closed transport gives its socket back
    on a later loop iteration, hence the short wait before the verdict.
    """
    fds_before = open_fds()
    tasks_before = asyncio.all_tasks()
    yield
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        fds, tasks = open_fds(), asyncio.all_tasks() - tasks_before
        if fds == fds_before and not tasks:
            return
        await asyncio.sleep(0.02)
    leaked_fds = {fd: target for fd, target in fds.items() if fds_before.get(fd) != target}
    assert not leaked_fds, f"file descriptors leaked: {leaked_fds}"
    assert fds == fds_before, "file descriptors closed that were open before"
    assert not tasks, f"tasks leaked: {sorted(task.get_name() for task in tasks)}"


# --- a raw client, for bytes no HTTP library would send ---------------------------------


async def send_raw(
    harness: Harness, *parts: bytes, pause_s: float = 0.0, within_s: float = 2.0
) -> bytes:
    """Write ``parts`` (``pause_s`` apart) and read until the proxy closes the connection."""
    host, port = harness.proxy.server.proxy_address or ("", 0)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause_s)
        async with asyncio.timeout(within_s):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _, status, reason = [*status_line.split(" ", 2), ""][:3]
    headers: CIMultiDict[str] = CIMultiDict(
        (name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines)
    )
    return Reply(int(status), reason, headers, body, 0.0)
