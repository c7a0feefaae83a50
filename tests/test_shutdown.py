"""The real CLI as a subprocess: SIGTERM stops accepting, drains shadows, exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support import route, upstream, write_config

PREDICT = "/v1/models/m:predict"


async def _wait_listening(port: int, deadline_s: float = 20.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"proxy did not listen on {port}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sigterm_drains_shadow_copies_and_exits_zero(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    answered: list[float] = []

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        answered.append(time.monotonic())
        return web.json_response({"predictions": [1.0]})

    async with upstream() as prod, upstream(slow) as shadow:
        port, admin = _free_port(), _free_port()
        config = write_config(
            tmp_path,
            [route("m", prod.url, [{"name": "s", "url": shadow.url, "timeout_s": 10}])],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin}",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "serve", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            await _wait_listening(port)
            for _ in range(3):
                async with client.post(f"http://127.0.0.1:{port}{PREDICT}", data=b"{}") as resp:
                    assert resp.status == 200
            async with client.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                assert "shadowproxy_shadow_in_flight" in await resp.text()
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        output = (await process.stdout.read()).decode()  # type: ignore[union-attr]
        assert code == 0, output
        # The slow shadow answered all three copies before the process exited.
        assert len(answered) == 3, output
        # And the listener is closed.
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass
        else:
            raise AssertionError("proxy still accepts connections after exit")
