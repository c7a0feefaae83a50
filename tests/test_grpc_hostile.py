"""Hostile input on the gRPC port: bytes that are not gRPC, HTTP/1.1, a stream that
never ends, 1,000 concurrent calls on one connection. The listener keeps serving, its
file descriptors and memory come back to where they were, and each refusal of a call
is counted."""

from __future__ import annotations

import asyncio
import gc
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest

from shadowproxy.grpc import server as grpc_server
from shadowproxy.grpc.server import Kind
from tests.grpc_support import fake_upstream, stream_upstream
from tests.support import running_proxy, write_config

HEALTH = "/grpc.health.v1.Health/Check"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> list[str]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return sorted(found)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def send_raw(port: int, data: bytes) -> bytes:
    """Write ``data``, read until the listener closes the connection (or 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.timeout(120)
async def test_hostile_input_leaves_the_listener_serving_and_resources_flat(
    tmp_path: Path,
) -> None:
    async def slow(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0.3)
        return b"ok"

    async with fake_upstream(slow) as prod, stream_upstream() as (stream_url, _, ended):
        routes = [
            {"name": "u", "match": {"grpc": "demo.Slow"}, "production": {"url": prod.url}},
            {"name": "s", "match": {"grpc": "demo.Stream"}, "production": {"url": stream_url}},
        ]
        config = write_config(
            tmp_path, routes, grpc_listen="127.0.0.1:0", grpc_max_concurrent_calls=200
        )
        async with running_proxy(config) as proxy:
            host, port = proxy.server.grpc_address  # type: ignore[misc]

            async def calls(count: int) -> list[grpc.StatusCode]:
                async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:

                    async def one() -> grpc.StatusCode:
                        try:
                            await channel.unary_unary("/demo.Slow/Get")(b"x", timeout=30)
                        except grpc.aio.AioRpcError as exc:
                            return exc.code()  # type: ignore[no-any-return]
                        return grpc.StatusCode.OK

                    return list(await asyncio.gather(*(one() for _ in range(count))))

            async def healthy() -> bool:
                async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
                    return await channel.unary_unary(HEALTH)(b"", timeout=5) == b"\x08\x01"

            # Warm up: both routes' production channels are connected and gRPC's and the
            # allocator's pools have grown to a burst's size before the baseline.
            assert grpc.StatusCode.OK in await calls(1000)
            async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
                warm = channel.stream_stream("/demo.Stream/Chat")(iter([b"warm"]))
                assert [message async for message in warm] == [b"re:warm"]
            warm_up_refused = proxy.metric(
                "shadowproxy_rejected_requests_total", reason="grpc_max_concurrent_calls"
            )
            gc.collect()
            fds, rss, targets = open_fds(), rss_mib(), fd_targets()

            for _ in range(20):
                await send_raw(port, os.urandom(4096))
            await send_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await send_raw(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512))
            assert await healthy()

            async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:

                async def forever() -> AsyncIterator[bytes]:
                    while True:
                        yield b"more"
                        await asyncio.sleep(0.005)

                endless = channel.stream_stream("/demo.Stream/Chat")(forever())
                answers = 0
                async for _ in endless:
                    answers += 1
                    if answers == 100:
                        break
                endless.cancel()
            for _ in range(100):
                if ended[0]:
                    break
                await asyncio.sleep(0.02)
            assert ended[0] == 1  # production's stream was cut too

            codes = await calls(1000)
            refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert codes.count(grpc.StatusCode.OK) + refused == 1000
            assert refused > 0
            assert proxy.metric(
                "shadowproxy_rejected_requests_total", reason="grpc_max_concurrent_calls"
            ) == refused + warm_up_refused  # fmt: skip
            assert await healthy()

            for _ in range(50):  # closed connections are reaped by the listener
                gc.collect()
                if open_fds() <= fds:
                    break
                await asyncio.sleep(0.1)
            extra = Counter(fd_targets()) - Counter(targets)
            assert open_fds() <= fds, str(extra)
            # Allocator pools move by a few MiB a burst (a leak would grow by the burst).
            assert rss_mib() < rss + 32, (rss_mib(), rss)


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class _UnaryCalls:
    """What the listener serves with, reduced to the part the handler lookup reads."""

    def kind(self, method: str) -> Kind:
        return "unary"

    def knows_service(self, service: str) -> bool:
        return service != "nobody.Serves"

    async def unary(self, method: str, request: bytes, context: Any) -> bytes:
        return request

    async def stream(self, method: str, context: Any) -> None:
        return None


async def test_method_handlers_are_kept_per_method_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gRPC asks for a method's handler on every call: one is made per method and
    reused, and a client naming endless methods cannot grow the cache past its bound
    (past it, each call gets a handler of its own, which still serves)."""
    monkeypatch.setattr(grpc_server, "HANDLER_CACHE_SIZE", 2)
    server = grpc_server.GrpcServer(
        _UnaryCalls(), max_concurrent_calls=1, max_concurrent_streams=1,
        max_message_bytes=1024, on_reject=lambda reason: None,
    )  # fmt: skip
    generic = grpc_server._Generic(server)

    def handler(method: str) -> Any:
        return generic.service(_Details(method, ()))

    assert handler("/a.S/M") is handler("/a.S/M")
    assert handler("/a.S/N") is not handler("/a.S/M")
    assert handler("/a.S/O") is not handler("/a.S/O")  # over the bound: made, not kept
    assert len(generic._handlers) == 2
    assert await handler("/a.S/O").unary_unary(b"x", None) == b"x"


async def test_methods_of_services_no_route_serves_are_not_kept() -> None:
    server = grpc_server.GrpcServer(
        _UnaryCalls(), max_concurrent_calls=1, max_concurrent_streams=1,
        max_message_bytes=1024, on_reject=lambda reason: None,
    )  # fmt: skip
    generic = grpc_server._Generic(server)
    for n in range(10):
        generic.service(_Details(f"/nobody.Serves/M{n}", ()))
    generic.service(_Details("/a.S/M", ()))
    generic.service(_Details(grpc_server.HEALTH_CHECK, ()))
    assert sorted(generic._handlers) == sorted(["/a.S/M", grpc_server.HEALTH_CHECK])
