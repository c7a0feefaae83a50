"""The load generator: response framing, percentiles, and no coordinated omission.

Run with ``.venv/bin/pytest benchmarks`` (not part of ``make test``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import loadgen
import pytest
from aiohttp import web
from drivers import normalize_loadgen, parse_wrk
from loadgen import ProtocolError, ResponseParser, build_target, percentile

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


def feed_bytewise(data: bytes) -> list[loadgen.Head]:
    parser = ResponseParser()
    heads = []
    for i in range(len(data)):
        heads += parser.feed(data[i : i + 1])
    return heads


@pytest.mark.parametrize("data", [OK, CHUNKED])
def test_a_response_split_anywhere_is_framed_once(data: bytes) -> None:
    assert len(feed_bytewise(data)) == 1
    assert len(ResponseParser().feed(data)) == 1


def test_back_to_back_responses_and_interim_ones() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    heads = ResponseParser().feed(interim + OK + CHUNKED + no_content)
    assert [h.status for h in heads] == [200, 201, 204]


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0", True),
    ],
)
def test_keep_alive(head: bytes, keep_alive: bool) -> None:
    assert loadgen.parse_head(head).keep_alive is keep_alive


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\n\r\nbody until close",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad\r\n\r\n",
    ],
)
def test_what_it_cannot_frame_is_an_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(data)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


@pytest.mark.parametrize(
    ("lag_ms", "late_s", "cpu", "held"),
    [
        (0.5, 0.0, 0.3, True),
        (5.0, 0.0, 0.3, False),
        (0.5, 0.5, 0.3, False),
        (0.5, 0.0, 0.95, False),
    ],
)
def test_keeping_up(lag_ms: float, late_s: float, cpu: float, held: bool) -> None:
    assert (loadgen.keeping_up(lag_ms, late_s, cpu) is None) is held


# --- against a real server on loopback ----------------------------------------------


@pytest.fixture
async def stalling_server() -> AsyncIterator[str]:
    """Answers at once, except that the 20th request takes 300 ms."""
    seen = 0

    async def handle(request: web.BaseRequest) -> web.Response:
        nonlocal seen
        seen += 1
        await request.read()
        if seen == 20:
            await asyncio.sleep(0.3)
        return web.Response(body=b'{"predictions":[1]}', content_type="application/json")

    runner = web.ServerRunner(web.Server(handle), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1/models/m:predict"
    await runner.cleanup()


async def test_open_loop_counts_the_queue_behind_a_stall(stalling_server: str) -> None:
    # One connection at 200 req/s: the 300 ms stall holds up about 60 requests. A
    # closed-loop tool would record one slow request; measured from their due times,
    # the requests that queued behind it are slow too.
    target = build_target(stalling_server, "POST", b"{}")
    raw = await loadgen.open_loop(target, rate=200, duration=1.0, connections=1, grace=2.0)
    assert raw["ok"] == 200 and raw["unfinished"] == 0
    assert raw["latency_ms"]["p90"] > 50.0
    assert raw["service_ms"]["p90"] < 50.0
    assert normalize_loadgen(raw)["p99_ms"] == raw["latency_ms"]["p99"]


async def test_closed_loop_sends_back_to_back(stalling_server: str) -> None:
    target = build_target(stalling_server, "POST", b"{}")
    raw = await loadgen.closed_loop(target, duration=0.5, connections=2, grace=1.0)
    assert raw["ok"] > 20 and raw["status_errors"] == raw["socket_errors"] == 0


async def test_nothing_listening_fails_before_the_clock_starts() -> None:
    target = build_target("http://127.0.0.1:1/", "POST", b"")
    with pytest.raises(OSError):
        await loadgen.open_loop(target, rate=10, duration=0.1, connections=1, grace=0.1)


def test_wrk_output_is_normalized() -> None:
    out = (
        "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n"
        'WRK_JSON {"requests":1000,"duration_us":2000000,"connect":0,"read":1,"write":0,'
        '"status":10,"timeout":2,"p50_us":1500,"p99_us":9000,"max_us":12000}\n'
    )
    result = parse_wrk(out)
    assert result["rps"] == 495.0
    assert result["errors"] == 13
    assert (result["p50_ms"], result["p99_ms"]) == (1.5, 9.0)
