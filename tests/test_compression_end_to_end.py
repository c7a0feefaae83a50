"""Compressed traffic through the real proxy: the ``requests`` client (gzip upload, and it
accepts gzip, deflate, br and zstd as it does by default), aiohttp model servers that
compress their answers for real, the writer process, Parquet read back.

The client must get production's bytes and ``Content-Encoding`` unchanged; the recording
must hold the decoded JSON and the comparison must have read it.
"""

from __future__ import annotations

import asyncio
import gzip
import resource
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import orjson
import pytest
import requests
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from tests.support import (
    free_port,
    route,
    run_cli_proxy,
    running_proxy,
    upstream,
    write_config,
)
from tests.test_content_coding import gzip_bomb

ROWS = 40
COMPARE = {"prediction": "kserve-v1", "kind": "label"}


def instances(n: int) -> bytes:
    return orjson.dumps({"instances": [[n, row, 0.5, 1.5] for row in range(ROWS)]})


def model(coding: web.ContentCoding | None, flips: bool) -> Any:
    """A classifier answering one label per instance, over 1 KB, compressed by aiohttp:
    gzip when ``coding`` says so, else whatever it negotiates with Accept-Encoding."""

    async def handle(request: web.Request) -> web.StreamResponse:
        rows = orjson.loads(await request.read())["instances"]  # aiohttp undoes the gzip
        n = int(rows[0][0])
        labels = [(n + row) % 3 for row in range(len(rows))]
        if flips and n % 5 == 0:
            labels[7] = (labels[7] + 1) % 3  # the shadow gets one row of every 5th wrong
        scores = [[0.1, 0.2, 0.7]] * len(rows)
        response = web.json_response({"predictions": labels, "scores": scores})
        response.enable_compression(coding)
        return response

    return handle


def post(url: str, n: int) -> tuple[int, dict[str, str], bytes]:
    """What the client received: status, headers and the body bytes as they came."""
    response = requests.post(
        url,
        data=gzip.compress(instances(n)),
        headers={
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
            "X-Request-Id": f"req-{n:05d}",
        },
        stream=True,
        timeout=30,
    )
    with response:
        return response.status_code, dict(response.headers), response.raw.read(decode_content=False)


@pytest.mark.timeout(120)
async def test_gzip_both_ways_is_decoded_for_the_record_and_untouched_for_the_client(
    tmp_path: Path,
) -> None:
    async with (
        upstream(model(web.ContentCoding.gzip, flips=False)) as prod,
        upstream(model(None, flips=True)) as shadow,
    ):
        port = free_port()
        config = write_config(
            tmp_path,
            [route("iris", prod.url, [{"name": "tree", "url": shadow.url}], compare=COMPARE)],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{free_port()}",
        )
        path = "/v1/models/iris:predict"
        through: list[tuple[int, dict[str, str], bytes]] = []

        async def traffic() -> None:
            for n in range(20):
                through.append(await asyncio.to_thread(post, f"http://127.0.0.1:{port}{path}", n))

        await run_cli_proxy(config, port, traffic)
        direct = await asyncio.to_thread(post, f"{prod.url}{path}", 0)

    # The client got production's answer byte for byte, still gzip.
    status, headers, raw = through[0]
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert raw == direct[2] and raw[:2] == b"\x1f\x8b"
    assert orjson.loads(gzip.decompress(raw))["predictions"][:3] == [0, 1, 2]
    # Production and the shadow received the upload gzipped, as sent (aiohttp undid it).
    for server in (prod, shadow):
        assert ("Content-Encoding", "gzip") in server.seen[0].headers
        assert server.seen[0].body == instances(0)

    table = read_dataset(str(tmp_path / "shadow-logs"))
    rows = {row["request_id"]: row for row in table.to_pylist()}
    assert len(rows) == 20
    for n in range(20):
        row = rows[f"req-{n:05d}"]
        assert row["request_body"] == instances(n)
        assert orjson.loads(row["prod_body"])["predictions"][0] == n % 3
        assert orjson.loads(row["shadow_body"])["scores"][0] == [0.1, 0.2, 0.7]
        assert row["request_content_encoding"] == "gzip"
        assert row["prod_content_encoding"] == "gzip"
        assert row["shadow_content_encoding"] in {"gzip", "deflate", "br"}  # aiohttp's pick
        assert row["prod_body_decode_error"] is row["shadow_body_decode_error"] is None
        assert (row["comparator"], row["batch_size"]) == ("label", ROWS), row["compare_detail"]
        assert row["agree"] is (n % 5 != 0)
        assert row["batch_agree"] == (ROWS - 1 if n % 5 == 0 else ROWS)


@pytest.mark.timeout(120)
async def test_a_gzip_bomb_from_a_shadow_is_an_incomparable_row_not_memory(
    tmp_path: Path,
) -> None:
    bomb = gzip_bomb()  # 1 GiB of zeros in about 1 MiB

    async def bombing(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    async with (
        upstream(model(web.ContentCoding.gzip, flips=False)) as prod,
        upstream(bombing) as shadow,
    ):
        config_path = write_config(
            tmp_path,
            [
                route(
                    "iris",
                    prod.url,
                    [{"name": "bomb", "url": shadow.url}],
                    compare=COMPARE,
                    max_capture_bytes=2 << 20,  # the whole bomb is captured
                    max_decoded_bytes=4 << 20,
                )
            ],
            recording={"dir": str(tmp_path / "shadow-logs"), "writer": "thread"},
        )
        config = load_config(config_path)
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        comparer = Comparer(config.routes)
        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
        server = Server(config, metrics, recorder, recorder, comparer.auto_choices)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            url = f"http://{host}:{port}/v1/models/iris:predict"
            status, headers, _ = await asyncio.to_thread(post, url, 0)
        finally:
            await server.stop()
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024

    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert grown_mib < 256, f"peak memory grew by {grown_mib:.0f} MiB for a 1 GiB bomb"
    [row] = read_dataset(str(tmp_path / "shadow-logs")).to_pylist()
    assert row["agree"] is None
    assert row["compare_detail"] == (
        "shadow body decodes (gzip) to more than 4194304 bytes (max_decoded_bytes)"
    )
    assert row["shadow_body_decode_error"] == (
        "decodes (gzip) to more than 4194304 bytes (max_decoded_bytes)"
    )
    assert row["shadow_content_encoding"] == "gzip"
    assert row["shadow_body"] == bomb[:65536]  # kept as sent, capped like any body
    assert orjson.loads(row["prod_body"])["predictions"][:3] == [0, 1, 2]
    labels = {"route": "iris", "body": "shadow", "reason": "too_large"}
    assert registry.get_sample_value("shadowproxy_body_decode_failures_total", labels) == 1


async def test_the_proxy_keeps_encodings_as_sent_and_decodes_nothing(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """Both Content-Encoding lines of each side reach the pair, joined in order; the
    bytes and headers travel on untouched (the writer decodes, off the production path)."""
    answer = brotli.compress(gzip.compress(b'{"predictions": [1]}'))

    async def stacked(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict([("Content-Encoding", "gzip"), ("Content-Encoding", "br")])
        return web.Response(body=answer, headers=headers)

    async with upstream(stacked) as prod, upstream(stacked) as shadow:
        config = write_config(tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            upload = gzip.compress(b'{"instances": [1]}')
            headers = CIMultiDict([("Content-Encoding", "gzip"), ("Content-Encoding", "identity")])
            async with client.post(
                proxy.url + "/v1/models/m:predict", data=upload, headers=headers
            ) as response:
                assert await response.read() == answer
                assert response.headers.getall("Content-Encoding") == ["gzip", "br"]
            [pair] = await proxy.sink.wait_for(1)
    assert (pair.request.body, pair.request.content_encoding) == (upload, "gzip, identity")
    assert (pair.production.body, pair.production.content_encoding) == (answer, "gzip, br")
    assert (pair.result.body, pair.result.content_encoding) == (answer, "gzip, br")
