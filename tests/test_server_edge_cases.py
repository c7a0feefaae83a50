"""The traffic port at its edges: slow and endless heads, pipelined 100-continue,
header bytes outside ASCII in both directions, answers whose heads cannot be sent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shadowproxy.http.request import HttpRequest, RequestBodyError
from shadowproxy.http.server import HttpServer, ServerLimits
from tests.faults.upstreams import Faulty, read_request, serve
from tests.support import route, running_proxy, write_config


class Streamer:
    """``/slow`` streams two chunks 0.4 s apart; anything else reads its body and answers."""

    async def __call__(self, request: HttpRequest) -> None:
        body = b""
        try:
            while chunk := await request.body.read_chunk():
                body += chunk
        except RequestBodyError:
            request.abort()
            return
        if request.target == "/slow":
            request.start(200, "OK", [], None)
            await request.write(b"a")
            await asyncio.sleep(0.4)
            await request.write(b"b")
            request.end()
            return
        request.reply(200, "OK", [], b"got " + body)


async def _server(**limits: float) -> tuple[HttpServer, int]:
    server = HttpServer(Streamer(), ServerLimits(**limits))  # type: ignore[arg-type]
    _, port = await server.listen("127.0.0.1", 0)
    return server, port


# --- the header timeout restarts with every byte ---------------------------------------


async def test_header_timeout_counts_from_the_first_byte_not_the_last() -> None:
    """A slowloris client sending one byte every 0.2 s must get its 408 about 0.5 s after
    its first byte, as ServerLimits.header_timeout_s documents."""
    server, port = await _server(header_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = asyncio.get_running_loop().create_task(reader.read())
    try:
        for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 20:  # ~7 s at one byte / 0.2 s
            if answer.done():
                break
            try:
                writer.write(bytes([byte]))
            except ConnectionError:
                break
            await asyncio.sleep(0.2)
        raw = await asyncio.wait_for(answer, 5)
        elapsed = time.monotonic() - started
    finally:
        answer.cancel()
        writer.close()
        await server.close(1.0)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert elapsed < 1.5, f"408 only after {elapsed:.1f}s: each byte restarted the timer"


# --- a single header line is buffered without bound -----------------------------------


async def test_an_endless_header_line_gets_431_before_it_ends() -> None:
    """max_header_bytes is 4 KiB; a client streaming one 4 MiB header line must be cut
    off with 431 once it is over the limit, not buffered whole by httptools."""
    server, port = await _server(max_header_bytes=4096, header_timeout_s=30.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):
                writer.write(b"a" * 65536)
                await asyncio.wait_for(writer.drain(), 2)
        except (ConnectionError, TimeoutError):
            pass
        raw = await asyncio.wait_for(reader.read(65536), 2)
    except TimeoutError:
        raw = b"(no answer within 2 s: the header was still being buffered)"
    finally:
        writer.close()
        await server.close(1.0)
    assert raw.startswith(b"HTTP/1.1 431 "), raw[:80]


# --- 100 Continue for a queued request is written into another response ---------------


async def test_100_continue_for_a_pipelined_request_is_not_written_into_the_previous_response() -> (
    None
):
    server, port = await _server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        received = await asyncio.wait_for(reader.readuntil(b"1\r\na\r\n"), 2)
        # While /slow is still streaming, the next request announces its body.
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        received += await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 2)
    finally:
        writer.close()
        await server.close(1.0)
    first_response = received.split(b"0\r\n\r\n")[0]
    assert b"100 Continue" not in first_response, first_response


# --- header bytes outside ASCII: latin-1 in, UTF-8 out (and back) -------------------


async def _raw_upstream(
    faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while (request := await read_request(faulty, reader)) is not None:
        target = request.split(b" ", 2)[1]
        if target.endswith(b"/euro"):
            writer.write(
                b"HTTP/1.1 200 OK\r\nX-Price: 5 \xe2\x82\xac\r\nContent-Length: 2\r\n\r\nok"
            )
        elif target.endswith(b"/euro-stream"):
            writer.write(
                b"HTTP/1.1 200 OK\r\nX-Price: 5 \xe2\x82\xac\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 3)
    except ConnectionError as exc:
        return f"(connection reset: {exc})".encode()
    except TimeoutError:
        return b"(no answer and no close within 3 s)"
    finally:
        writer.close()


async def _proxy_exchange(
    tmp_path: Path, *requests: bytes, max_connections: int = 1000
) -> tuple[list[bytes], list[bytes]]:
    async with serve(_raw_upstream) as faulty:
        config = write_config(
            tmp_path, [route("m", faulty.url, timeout_s=2)],
            upstream_pool={"max_connections": max_connections},
        )  # fmt: skip
        async with running_proxy(config) as proxy:
            assert proxy.server.proxy_address is not None
            port = proxy.server.proxy_address[1]
            raws = [await _send(port, data) for data in requests]
        return raws, faulty.requests


async def test_non_ascii_request_header_reaches_production_byte_for_byte(tmp_path: Path) -> None:
    raw_request = b"GET /v1/models/m/x HTTP/1.1\r\nHost: x\r\nX-Name: caf\xc3\xa9\r\nConnection: close\r\n\r\n"
    _, seen = await _proxy_exchange(tmp_path, raw_request)
    assert seen, "production got no request"
    assert b"X-Name: caf\xc3\xa9\r\n" in seen[0], seen[0]


async def test_utf8_response_header_reaches_the_client_byte_for_byte(tmp_path: Path) -> None:
    (raw,), _ = await _proxy_exchange(
        tmp_path, b"GET /v1/models/m/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    assert b"X-Name: caf\xc3\xa9\r\n" in raw, raw[:200]


async def test_response_header_outside_latin1_gets_an_answer_not_a_hung_connection(
    tmp_path: Path,
) -> None:
    """reply() marks the response done before encoding the head; the encode fails, so
    _run neither sends a 500 nor aborts: the client waits forever (no timer is armed)."""
    (raw,), _ = await _proxy_exchange(
        tmp_path, b"GET /v1/models/m/euro HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]


async def test_streamed_response_header_outside_latin1_is_passed_not_cut(tmp_path: Path) -> None:
    """start() raises UnicodeEncodeError, which _stream does not catch (nor release the
    upstream response): the client's connection is aborted before any byte."""
    euro = b"GET /v1/models/m/euro-stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    (raw,), _ = await _proxy_exchange(tmp_path, euro)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
