"""The real CLI as a subprocess: SIGTERM stops accepting, drains shadows, exits 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support import free_port, route, run_cli_proxy, upstream, write_config

PREDICT = "/v1/models/m:predict"


async def test_sigterm_drains_shadow_copies_and_exits_zero(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    answered: list[float] = []

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        answered.append(time.monotonic())
        return web.json_response({"predictions": [1.0]})

    async with upstream() as prod, upstream(slow) as shadow:
        port, admin = free_port(), free_port()
        config = write_config(
            tmp_path,
            [route("m", prod.url, [{"name": "s", "url": shadow.url, "timeout_s": 10}])],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin}",
        )

        async def traffic() -> None:
            for _ in range(3):
                async with client.post(f"http://127.0.0.1:{port}{PREDICT}", data=b"{}") as resp:
                    assert resp.status == 200
            async with client.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                assert "shadowproxy_shadow_in_flight" in await resp.text()

        output = await run_cli_proxy(config, port, traffic)
        # The slow shadow answered all three copies before the process exited.
        assert len(answered) == 3, output
        # And the listener is closed.
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass
        else:
            raise AssertionError("proxy still accepts connections after exit")
