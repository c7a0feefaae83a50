"""The one admin app: the same token rules for a single process and for the supervisor
of ``serve --workers N``, a token that follows reloads, and the bound address read
through aiohttp's public API."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from shadowproxy.admin.api import admin_app, bind, json_response
from tests.support import free_port, route, upstream, write_config


class Endpoints:
    """Every endpoint answers which one it is: the tests look only at the token check."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        async def answer(request: web.Request) -> web.StreamResponse:
            return json_response({"endpoint": name})

        return answer


@pytest.fixture
async def admin() -> AsyncIterator[tuple[str, list[str | None]]]:
    token: list[str | None] = ["s3cret"]
    runner = web.AppRunner(admin_app(Endpoints(), lambda: token[0]))  # type: ignore[arg-type]
    await runner.setup()
    host, port = await bind(runner, "127.0.0.1:0")
    assert port != 0
    try:
        yield f"http://{host}:{port}", token
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_bearer_scheme_is_case_insensitive(
    admin: tuple[str, list[str | None]], scheme: str
) -> None:
    url, _ = admin
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"{scheme} s3cret"}
        async with session.get(f"{url}/routes", headers=headers) as response:
            assert response.status == 200
            assert (await response.json()) == {"endpoint": "routes"}


@pytest.mark.parametrize("given", [None, "Bearer wrong", "Basic czNjcmV0", "s3cret"])
async def test_a_missing_or_wrong_token_gets_401_with_a_challenge(
    admin: tuple[str, list[str | None]], given: str | None
) -> None:
    url, _ = admin
    headers = {"Authorization": given} if given else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/reload", headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="shadowproxy"'


async def test_probes_and_the_scrape_need_no_token(admin: tuple[str, list[str | None]]) -> None:
    url, _ = admin
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with session.get(f"{url}{path}") as response:
                assert response.status == 200, path


async def test_the_token_in_force_is_read_on_every_request(
    admin: tuple[str, list[str | None]],
) -> None:
    url, token = admin
    async with aiohttp.ClientSession() as session:
        token[0] = "rotated"
        old = {"Authorization": "Bearer s3cret"}
        async with session.get(f"{url}/experiments", headers=old) as response:
            assert response.status == 401
        new = {"Authorization": "Bearer rotated"}
        async with session.get(f"{url}/experiments", headers=new) as response:
            assert response.status == 200
        token[0] = None
        async with session.get(f"{url}/experiments") as response:
            assert response.status == 200


@pytest.mark.timeout(90)
async def test_the_supervisor_follows_a_token_change_on_reload(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    async with upstream() as production:
        config = write_config(
            tmp_path,
            [route("m", production.url)],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin_port}",
            admin_token="first",
        )
        log = (tmp_path / "serve.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "serve", "--config", str(config),
            "--workers", "2", stdout=log, stderr=log,
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                await _ready(session, admin)
                async with session.get(f"{admin}/routes") as response:
                    assert response.status == 401
                    assert "Bearer" in response.headers["WWW-Authenticate"]
                lower = {"Authorization": "bearer first"}
                async with session.get(f"{admin}/routes", headers=lower) as response:
                    assert response.status == 200
                document = yaml.safe_load(config.read_text())
                document["admin_token"] = "second"
                config.write_text(yaml.safe_dump(document))
                async with session.post(f"{admin}/reload", headers=lower) as response:
                    assert response.status == 200, await response.text()
                async with session.get(f"{admin}/routes", headers=lower) as response:
                    assert response.status == 401
                second = {"Authorization": "Bearer second"}
                async with session.get(f"{admin}/routes", headers=second) as response:
                    assert response.status == 200
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 60) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            log.close()


async def _ready(session: aiohttp.ClientSession, admin: str) -> None:
    for _ in range(300):
        try:
            async with session.get(f"{admin}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the workers never became ready")
