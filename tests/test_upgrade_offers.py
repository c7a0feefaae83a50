"""Upgrade offers through the whole proxy: h2c is ignored, WebSocket refused.

``curl --http2`` and Java's HttpClient offer ``Upgrade: h2c`` with ``HTTP2-Settings``
on every cleartext request; the proxy serves them as HTTP/1.1 and neither production
nor the shadows ever see the offer. Real upstreams on loopback, real curl.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support import Seen, Upstream, route, running_proxy, upstream, write_config

PREDICT = "/v1/models/m:predict"
OFFER_HEADERS = {"upgrade", "http2-settings", "connection"}
SETTINGS = "AAMAAABkAAQCAAAAAAIAAAAA"


def offer_headers_seen(seen: list[Seen]) -> set[str]:
    return {name.lower() for request in seen for name, _ in request.headers} & OFFER_HEADERS


def shadow_route(prod: Upstream, shadow: Upstream) -> dict[str, object]:
    return route("m", prod.url, [{"name": "s", "url": shadow.url}])


async def test_h2c_offers_reach_neither_production_nor_shadow(tmp_path: Path) -> None:
    offer = f"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: {SETTINGS}\r\n"
    # A client may also send the offer's headers without naming them in Connection.
    bare = f"Upgrade: h2c\r\nHTTP2-Settings: {SETTINGS}\r\n"
    body = b'{"instances": [[1, 2, 3]]}'
    chunked = (
        b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n"
    )
    async with upstream() as prod, upstream() as shadow:
        config = write_config(tmp_path, [shadow_route(prod, shadow)])
        async with running_proxy(config) as proxy:
            host, port = proxy.server.proxy_address  # type: ignore[misc]
            reader, writer = await asyncio.open_connection(host, port)
            head = f"POST {PREDICT} HTTP/1.1\r\nHost: proxy\r\n"
            writer.write(
                (f"{head}Content-Length: {len(body)}\r\n{offer}\r\n").encode() + body
                + (f"{head}Transfer-Encoding: chunked\r\n{offer}\r\n").encode() + chunked
                + (f"{head}Content-Length: {len(body)}\r\n{bare}"
                   "Connection: close\r\n\r\n").encode() + body
            )  # fmt: skip
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await proxy.sink.wait_for(3)
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 3, raw
    assert b"101 Switching" not in raw and b"upgrade:" not in raw.lower()
    assert [seen.body for seen in prod.seen] == [body] * 3
    assert sorted(seen.body for seen in shadow.seen) == [body] * 3
    assert offer_headers_seen(prod.seen) == set()
    assert offer_headers_seen(shadow.seen) == set()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_http2_gets_http11_answers_on_one_connection(tmp_path: Path) -> None:
    # Larger than the listener's read-ahead, so reading pauses and resumes mid-body.
    body = orjson.dumps({"instances": [[5.1, 3.5]] * 40_000})
    (tmp_path / "body.json").write_bytes(body)
    async with upstream() as prod, upstream() as shadow:
        config = write_config(tmp_path, [shadow_route(prod, shadow)])
        async with running_proxy(config) as proxy:
            url = proxy.url + PREDICT
            curl = await asyncio.create_subprocess_exec(
                "curl", "--http2", "--silent", "--show-error", "--verbose",
                "--header", "Content-Type: application/json", "--data-binary", f"@{tmp_path / 'body.json'}",
                "--write-out", "\n%{http_version} %{http_code} %{num_connects}\n",
                url, url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(curl.communicate(), 30)
            await proxy.sink.wait_for(2)
    trace = err.decode(errors="replace")
    assert curl.returncode == 0, trace
    # curl offered the upgrade, and got plain HTTP/1.1 answers on one connection.
    assert "Upgrade: h2c" in trace and "HTTP2-Settings:" in trace, trace
    lines = out.decode().splitlines()
    answers = [orjson.loads(line) for line in lines if line.startswith("{")]
    assert [line for line in lines if line and not line.startswith("{")] == [
        "1.1 200 1",
        "1.1 200 0",
    ]
    assert [answer["echo"] for answer in answers] == [body.decode()] * 2
    assert [seen.body for seen in prod.seen] == [seen.body for seen in shadow.seen] == [body] * 2
    assert offer_headers_seen(prod.seen) == set()
    assert offer_headers_seen(shadow.seen) == set()


async def test_websocket_client_gets_a_501_naming_websocket(tmp_path: Path) -> None:
    async with upstream() as prod:
        config = write_config(tmp_path, [route("m", prod.url)])
        async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(proxy.url + "/v1/models/m/ws")
            async with session.get(
                proxy.url + "/v1/models/m/ws",
                headers={"Connection": "Upgrade", "Upgrade": "websocket", "X-Request-Id": "w1"},
            ) as response:
                error = await response.json()
            rejected = proxy.metric("shadowproxy_rejected_requests_total", reason="upgrade")
    assert refused.value.status == 501
    assert response.status == 501 and response.headers["X-Request-Id"] == "w1"
    assert error["status"] == 501 and error["request_id"] == "w1"
    assert "WebSocket is not supported" in error["error"]
    assert rejected == 2
    assert prod.seen == []
