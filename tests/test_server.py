"""The proxy listener's HTTP/1.1 server, spoken to over raw sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from shadowproxy.http.request import BODY_HIGH_WATER, HttpRequest, RequestBodyError
from shadowproxy.http.server import HttpServer, ServerLimits


class Echo:
    """Answers with the method, target and body it read; streams when asked to."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.body_errors: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, request: HttpRequest) -> None:
        await self.release.wait()
        chunks = []
        try:
            while chunk := await request.body.read_chunk():
                chunks.append(chunk)
        except RequestBodyError as exc:
            self.body_errors.append(str(exc))
            request.reply(400, "Bad Request", [], b"bad body")
            return
        body = b"".join(chunks)
        self.seen.append((request.method, request.target, body))
        if request.target == "/stream":
            request.start(200, "OK", [("X-Mode", "stream")], None)
            for part in (b"one", b"two"):
                await request.write(part)
            request.end()
            return
        text = f"{request.method} {request.target} {len(body)}".encode()
        request.reply(200, "OK", [("X-Host", request.headers.get("host", ""))], text)


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[Echo, HttpServer, int]]:
    echo = Echo()
    rejected: list[str] = []
    server = HttpServer(
        echo, ServerLimits(max_header_bytes=4096, header_timeout_s=0.5), rejected.append
    )
    server.rejected = rejected  # type: ignore[attr-defined]
    _, port = await server.listen("127.0.0.1", 0)
    yield echo, server, port
    await server.close(1.0)


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


def rejections(server: HttpServer) -> list[str]:
    return server.rejected  # type: ignore[attr-defined,no-any-return]


async def test_answers_keep_alive_requests_in_order_including_pipelined(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, _, port = echo_server
    requests = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    raw = await exchange(port, requests)
    answers = raw.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers] == [
        b"POST /a 3",
        b"GET /b 0",
        b"POST /c 2",
        b"GET /d 0",
    ]
    assert b"Connection: close" in answers[-1]
    assert [s[2] for s in echo.seen] == [b"abc", b"", b"hi", b""]


async def test_streamed_answer_is_chunked_for_http11_and_close_delimited_for_http10(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    _, _, port = echo_server
    raw = await exchange(port, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in raw
    assert raw.endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    raw = await exchange(port, b"GET /stream HTTP/1.0\r\n\r\n")
    assert b"Transfer-Encoding" not in raw
    assert b"Connection: close" in raw
    assert raw.endswith(b"\r\n\r\nonetwo")


async def test_request_smuggling_is_rejected_and_never_reaches_the_handler(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, server, port = echo_server
    raw = await exchange(
        port,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"/smuggled" not in b"".join(s[1].encode() for s in echo.seen)
    assert echo.seen == []
    assert rejections(server) == ["bad_request"]


async def test_conflicting_content_lengths_are_rejected(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, _, port = echo_server
    raw = await exchange(
        port, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    )
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert echo.seen == []


async def test_oversized_head_gets_431_with_a_request_id_and_the_server_keeps_serving(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, server, port = echo_server
    raw = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    document = orjson.loads(body)
    assert document["status"] == 431 and "4096" in document["error"]
    assert len(document["request_id"]) == 32
    assert rejections(server) == ["header_too_large"]
    raw = await exchange(port, b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b"GET /next 0")
    assert echo.seen == [("GET", "/next", b"")]


async def test_a_long_url_counts_toward_the_head_limit(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    _, _, port = echo_server
    raw = await exchange(port, b"GET /" + b"u" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 431 ")


async def test_slowloris_head_gets_408_and_the_connection_closes(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, server, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Counted from the first byte: the proxy answers 408 while bytes still trickle in.
    answer = asyncio.get_running_loop().create_task(reader.read())
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 40:
        if answer.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    raw = await asyncio.wait_for(answer, 5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert rejections(server) == ["header_timeout"]
    assert echo.seen == []


async def test_idle_connection_without_a_request_is_closed_silently(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    _, server, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert rejections(server) == []


async def test_invalid_chunked_body_reaches_the_handler_as_a_body_error(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, server, port = echo_server
    raw = await exchange(
        port,
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\nZZ\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in raw
    assert len(echo.body_errors) == 1 and "invalid" in echo.body_errors[0]
    assert rejections(server) == ["bad_request"]


async def test_client_leaving_mid_body_is_a_body_error(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, _, port = echo_server
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    for _ in range(100):
        if echo.body_errors:
            break
        await asyncio.sleep(0.02)
    assert echo.body_errors == ["client disconnected"]


async def test_expect_continue_is_answered_before_the_body_is_sent(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    _, _, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"POST /a 2")


H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
"""What ``curl --http2`` and Java's HttpClient add to a cleartext request."""


def answers(raw: bytes) -> list[bytes]:
    """The bodies of a run of ``200 OK`` answers (``Echo``'s, without ``Content-Length``
    ambiguity: each ends where the next status line starts)."""
    return [a.rsplit(b"\r\n\r\n", 1)[1] for a in raw.split(b"HTTP/1.1 200 OK\r\n")[1:]]


async def test_h2c_upgrade_offers_are_ignored_and_pipelined_requests_behind_them_served(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, server, port = echo_server
    requests = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n" + H2C + b"\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" + H2C + b"\r\nhello"
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + H2C
        + b"\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    raw = await exchange(port, requests)
    assert answers(raw) == [b"GET /a 0", b"POST /b 5", b"POST /c 7", b"POST /d 2", b"GET /e 0"]
    assert [s[2] for s in echo.seen] == [b"", b"hello", b"abcdefg", b"hi", b""]
    assert b"101" not in raw.split(b"\r\n", 1)[0] and b"Upgrade" not in raw
    assert rejections(server) == []


async def test_h2c_offer_with_a_body_arriving_later_gets_the_whole_body(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, _, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n" + H2C + b"\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"abc")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"def")
    writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answers(raw) == [b"POST /late 6", b"GET /next 0"]
    assert echo.seen[0] == ("POST", "/late", b"abcdef")


async def test_h2c_offer_does_not_open_a_smuggling_door(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, server, port = echo_server
    raw = await exchange(
        port,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        + H2C
        + b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert echo.seen == [] and rejections(server) == ["bad_request"]


@pytest.mark.parametrize(
    ("head", "named"),
    [
        (
            (
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            ),
            "WebSocket",
        ),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n", "CONNECT"),
    ],
    ids=["websocket", "connect"],
)
async def test_websocket_and_connect_get_a_501_that_says_why(
    echo_server: tuple[Echo, HttpServer, int], head: bytes, named: str
) -> None:
    echo, server, port = echo_server
    raw = await exchange(port, head + b"X-Request-Id: ws-1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
    error = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert named in error["error"] and error["status"] == 501
    assert error["request_id"] == "ws-1" and b"X-Request-Id: ws-1\r\n" in raw
    assert echo.seen == [] and rejections(server) == ["upgrade"]


async def test_close_lets_the_request_in_hand_finish_and_closes_idle_connections(
    echo_server: tuple[Echo, HttpServer, int],
) -> None:
    echo, server, port = echo_server
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    echo.release.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    closing = asyncio.get_running_loop().create_task(server.close(5.0))
    await asyncio.sleep(0.1)
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""
    echo.release.set()
    raw = await asyncio.wait_for(reader.read(), 5)
    await closing
    assert raw.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in raw
    assert raw.endswith(b"GET /busy 0")
    writer.close()
    idle_writer.close()
    assert not server.connections


async def test_handler_failure_is_a_500_not_a_dropped_connection() -> None:
    async def broken(request: HttpRequest) -> None:
        raise ValueError("boom")

    server = HttpServer(broken)
    _, port = await server.listen("127.0.0.1", 0)
    try:
        raw = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        await server.close(1.0)
    assert raw.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


async def test_large_body_is_read_with_bounded_buffering() -> None:
    sizes: list[int] = []
    held: list[int] = []

    async def slow_reader(request: HttpRequest) -> None:
        total = 0
        while chunk := await request.body.read_chunk():
            total += len(chunk)
            held.append(request.body.buffered)
            await asyncio.sleep(0.001)
        sizes.append(total)
        request.reply(200, "OK", [], b"done")

    server = HttpServer(slow_reader)
    _, port = await server.listen("127.0.0.1", 0)
    body = b"x" * (8 * 1024 * 1024)
    try:
        raw = await exchange(
            port,
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body,
        )
    finally:
        await server.close(1.0)
    assert raw.endswith(b"done")
    assert sizes == [len(body)]
    # Paused at the high-water mark; one socket read (at most 256 KiB) may land on top.
    assert max(held) <= BODY_HIGH_WATER + 256 * 1024


async def test_a_stalled_body_fails_with_408_after_the_body_timeout() -> None:
    errors: list[RequestBodyError] = []

    async def reader(request: HttpRequest) -> None:
        try:
            while await request.body.read_chunk():
                pass
        except RequestBodyError as exc:
            errors.append(exc)
            request.reply(exc.status, "Request Timeout", [], str(exc).encode())
            return
        request.reply(200, "OK", [], b"complete")

    server = HttpServer(reader, ServerLimits(body_timeout_s=0.3))
    _, port = await server.listen("127.0.0.1", 0)
    try:
        reader_stream, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        raw = await asyncio.wait_for(reader_stream.read(), 5)
        writer.close()
    finally:
        await server.close(1.0)
    assert raw.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in raw and raw.endswith(b"request body stalled for 0.3s")
    assert [error.status for error in errors] == [408]
