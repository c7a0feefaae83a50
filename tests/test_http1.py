"""The HTTP/1.1 upstream client against real servers on loopback.

Well-behaved upstreams are aiohttp servers; misbehaving ones are raw asyncio servers
that write exactly the bytes a test needs (truncations, resets, garbage). The tests
that exercise transports most are run again on uvloop, the loop the proxy runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shadowproxy.errors import UpstreamUnavailable
from shadowproxy.http.client import Pool
from shadowproxy.http.connection import HIGH_WATER, BodyError
from shadowproxy.http.request_head import encode_request, request_framing

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- servers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """An aiohttp server on loopback; yields its port."""
    runner = web.ServerRunner(web.Server(handler, access_log=None), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


class Raw:
    """A raw TCP server: ``script(reader, writer, n)`` runs for the n-th connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Raw:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()  # scripts blocked on a read see the end and return
        async with asyncio.timeout(5):
            await asyncio.gather(*self._tasks)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self.script(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


def answer_each(*responses: bytes, close: bool = False) -> Script:
    """Answer the requests on every connection with ``responses`` in turn.

    With ``close``, answer one request per connection and close it.
    """

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for response in responses[:1] if close else responses:
            if await read_request(reader) is None:
                return
            writer.write(response)
            await writer.drain()
        if not close:
            await reader.read()  # until the client closes

    return script


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def pool_for(port: int, **options: Any) -> Pool:
    options.setdefault("max_connections", 4)
    options.setdefault("keepalive_timeout_s", 30.0)
    return Pool("127.0.0.1", port, **options)


async def settle() -> None:
    """Let pending transport callbacks (EOF, connection_lost) run."""
    for _ in range(5):
        await asyncio.sleep(0.01)


def no_other_tasks() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


# --- the request head (no sockets) ---------------------------------------------------------


def test_request_head_has_only_host_and_framing_added() -> None:
    head = encode_request(
        "POST",
        "/v1/m:predict?x=1%202",
        [("X-A", "1"), ("x-a", "2")],
        "up:8080",
        "Content-Length: 5",
    )
    assert head == (
        b"POST /v1/m:predict?x=1%202 HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n"
        b"Host: up:8080\r\nContent-Length: 5\r\n\r\n"
    )


def test_request_head_keeps_a_given_host_and_header_bytes() -> None:
    # aiohttp's server decodes header bytes as UTF-8 with surrogateescape: they go back unchanged.
    raw = "caf\u00e9 \udcff".encode("utf-8", "surrogateescape")
    value = raw.decode("utf-8", "surrogateescape")
    head = encode_request("GET", "/", [("host", "given"), ("X-V", value)], "up", None)
    assert head == b"GET / HTTP/1.1\r\nhost: given\r\nX-V: " + raw + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "body", "framing"),
    [
        ("GET", None, None),
        ("HEAD", None, None),
        ("POST", None, "Content-Length: 0"),
        ("DELETE", None, "Content-Length: 0"),
        ("GET", b"", "Content-Length: 0"),
        ("POST", b"abc", "Content-Length: 3"),
        ("POST", bytearray(b"ab"), "Content-Length: 2"),
        ("POST", object(), "Transfer-Encoding: chunked"),
    ],
)
def test_framing_follows_the_body(method: str, body: object, framing: str | None) -> None:
    assert request_framing(method, body) == framing


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", [("X-A", "1\r\nX-Injected: 1")]),
        ("GET", "/", [("X-A", "1\nX-Injected: 1")]),
        ("GET", "/", [("X-A", "1\r")]),
        ("GET", "/", [("X-A", "nul\0")]),
        ("GET", "/", [("X-A\r\nX-B", "1")]),
        ("GET", "/", [("Transfer-Encoding:chunked", "1")]),
        ("GET", "/", [("X A", "1")]),
        ("GET", "/", [("", "1")]),
        ("GET", "/", [("Content-Length", "5")]),
        ("GET", "/", [("transfer-encoding", "chunked")]),
        ("GET", "/ HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /", []),
        ("GET", "/a b", []),
        ("GET", "", []),
        ("GET /x", "/", []),
    ],
)
def test_unsafe_requests_are_refused(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(ValueError):
        encode_request(method, target, headers, "up", None)


async def test_unsafe_request_writes_nothing() -> None:
    async with Raw(answer_each(OK)) as server, pool_for(server.port) as pool:
        with pytest.raises(ValueError, match="header injection"):
            await pool.request("GET", "/", [("X-A", "1\r\nX-Injected: 1")])
        assert server.connections == 0
        assert pool.opened == pool.in_use == 0


async def test_sends_exactly_the_request_given() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request)
            writer.write(OK)

    async with Raw(script) as server, pool_for(server.port) as pool:
        await (await pool.request("POST", "/p?q=%41", [("X-A", "1")], b"hello")).read()
        await (await pool.request("GET", "/g", [])).read()
        await (await pool.request("POST", "/n", [])).read()
    host = f"Host: 127.0.0.1:{server.port}"
    assert seen == [
        f"POST /p?q=%41 HTTP/1.1\r\nX-A: 1\r\n{host}\r\nContent-Length: 5\r\n\r\nhello".encode(),
        f"GET /g HTTP/1.1\r\n{host}\r\n\r\n".encode(),
        f"POST /n HTTP/1.1\r\n{host}\r\nContent-Length: 0\r\n\r\n".encode(),
    ]


# --- response framing and keep-alive --------------------------------------------------------


async def test_keepalive_reuses_one_socket() -> None:
    peers: list[object] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({"echo": (await request.read()).decode()})

    async with serve(handler) as port, pool_for(port) as pool:
        for n in range(3):
            response = await pool.request("POST", "/", [("Content-Type", "text/plain")], b"x%d" % n)
            assert response.status == 200
            assert await response.read() == b'{"echo": "x%d"}' % n
            assert pool.in_use == 0
            assert pool.idle == 1
    assert len(peers) == 3
    assert len(set(peers)) == 1
    assert pool.opened == 1


CL_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 201 Created Here\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)
UNTIL_EOF = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
HTTP10 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
HTTP10_KEEPALIVE = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
CONNECTION_CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
NOT_MODIFIED = b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n'
HEAD_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "raw", "status", "body", "reused"),
    [
        ("GET", CL_BODY, 200, b"hello", True),
        ("GET", CHUNKED, 201, b"hello world", True),
        ("GET", UNTIL_EOF, 200, b"until the end", False),
        ("POST", CONTINUE, 200, b"ok", True),
        ("GET", EARLY_HINTS, 200, b"ok", True),
        ("GET", HTTP10, 200, b"ok", False),
        ("GET", HTTP10_KEEPALIVE, 200, b"ok", True),
        ("GET", CONNECTION_CLOSE, 200, b"ok", False),
        ("GET", NO_CONTENT, 204, b"", True),
        ("GET", NOT_MODIFIED, 304, b"", True),
        ("HEAD", HEAD_ANSWER, 200, b"", True),
    ],
    ids=[
        "content-length", "chunked", "until-eof", "100-continue", "103-early-hints", "http10",
        "http10-keep-alive", "connection-close", "204", "304", "head",
    ],
)  # fmt: skip
async def test_response_framing(
    method: str, raw: bytes, status: int, body: bytes, reused: bool
) -> None:
    close = raw in (UNTIL_EOF, CONNECTION_CLOSE)
    async with Raw(answer_each(raw, raw, close=close)) as server, pool_for(server.port) as pool:
        for _ in range(2):
            response = await pool.request(method, "/", [], b"{}" if method == "POST" else None)
            assert response.status == status
            assert await response.read() == body
            await settle()
            assert pool.in_use == 0
        assert pool.opened == (1 if reused else 2)
        assert pool.idle == (1 if reused else 0)


async def test_response_head_details() -> None:
    async with (
        Raw(answer_each(CHUNKED, CL_BODY, HEAD_ANSWER)) as server,
        pool_for(server.port) as pool,
    ):
        chunked = await pool.request("GET", "/", [])
        assert (chunked.status, chunked.reason, chunked.chunked) == (201, "Created Here", True)
        assert chunked.content_length is None
        assert chunked.headers == [("Transfer-Encoding", "chunked")]
        await chunked.read()
        plain = await pool.request("GET", "/", [])
        assert plain.headers == [("Content-Length", "5"), ("X-Dup", "1"), ("x-dup", "2")]
        assert (plain.content_length, plain.chunked) == (5, False)
        await plain.read()
        head = await pool.request("HEAD", "/", [])
        assert head.content_length == 1234
        assert await head.read() == b""


async def test_interim_and_final_answer_in_separate_packets() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        for piece in (
            b"HTTP/1.1 100 Cont",
            b"inue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"Content-Length: 2\r\n\r\nok",
        ):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        await reader.read()

    async with Raw(script) as server, pool_for(server.port) as pool:
        response = await pool.request("POST", "/", [("Expect", "100-continue")], b"{}")
        assert (response.status, await response.read()) == (200, b"ok")


async def test_stray_bytes_after_an_answer_stop_reuse() -> None:
    body_after_head = HEAD_ANSWER + b"surprise"
    async with Raw(answer_each(OK + b"HTTP/1.1 200 OK\r\n\r\n", body_after_head)) as server:
        async with pool_for(server.port) as pool:
            first = await pool.request("GET", "/", [])
            assert await first.read() == b"ok"
            second = await pool.request("HEAD", "/", [])
            assert await second.read() == b""
            assert pool.opened == 2
            assert pool.idle == 0


async def test_bytes_on_an_idle_connection_close_it() -> None:
    idle, stray = asyncio.Event(), asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await idle.wait()
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await writer.drain()
        stray.set()
        await reader.read()

    async with Raw(script) as server, pool_for(server.port) as pool:
        await (await pool.request("GET", "/", [])).read()
        assert pool.idle == 1
        idle.set()
        await stray.wait()
        await settle()
        assert (pool.idle, pool.in_use) == (0, 0)


# --- streaming, backpressure, caps ---------------------------------------------------------


async def test_first_chunk_arrives_before_the_server_finishes() -> None:
    go_on = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await go_on.wait()
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    async with serve(handler) as port, pool_for(port) as pool:
        response = await pool.request("GET", "/events", [])
        chunks = response.iter_chunks()
        assert await anext(chunks) == b"data: first\n\n"
        go_on.set()
        assert [chunk async for chunk in chunks] == [b"data: second\n\n"]
        assert pool.idle == 1


async def test_slow_reader_pauses_the_socket_and_memory_stays_bounded() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    total = 50 * 1024 * 1024

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = total
        await response.prepare(request)
        for _ in range(total // len(piece)):
            await response.write(piece)
        return response

    async with serve(handler) as port, pool_for(port) as pool:
        response = await pool.request("GET", "/big", [])
        conn = response._conn
        assert conn is not None
        received, most_buffered, paused_seen = 0, 0, False
        async for chunk in response.iter_chunks():
            if received == 0:
                await asyncio.sleep(0.2)  # a slow consumer: the buffer fills up meanwhile
                paused_seen = not conn.transport.is_reading()
            received += len(chunk)
            most_buffered = max(most_buffered, conn.buffered)
        assert received == total
        assert paused_seen
        assert most_buffered < HIGH_WATER + 512 * 1024
        assert conn.transport.is_reading()  # resumed: idle connections must see EOF
        assert pool.idle == 1


async def test_read_capped_stops_at_the_cap_and_closes() -> None:
    big = b"x" * (1024 * 1024)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=big if request.path == "/big" else b"small")

    async with serve(handler) as port, pool_for(port) as pool:
        response = await pool.request("GET", "/big", [])
        assert await response.read_capped(1000) == (b"x" * 1000, True)
        assert (pool.in_use, pool.idle) == (0, 0)
        response = await pool.request("GET", "/small", [])
        assert await response.read_capped(5) == (b"small", False)
        assert (pool.in_use, pool.idle) == (0, 1)
        assert pool.opened == 2


async def test_endless_chunked_body_is_cut_by_read_capped() -> None:
    done = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")
                await writer.drain()
        finally:
            done.set()

    async with Raw(script) as server, pool_for(server.port) as pool:
        response = await pool.request("GET", "/", [])
        body, truncated = await response.read_capped(100_000)
        assert (len(body), truncated) == (100_000, True)
        await asyncio.wait_for(done.wait(), 5)  # the server saw the connection go
        assert (pool.in_use, pool.idle) == (0, 0)


async def test_streamed_request_body_is_sent_chunked() -> None:
    got: list[tuple[str | None, bytes]] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        got.append((request.headers.get("Transfer-Encoding"), await request.read()))
        return web.Response(text="thanks")

    async def body() -> AsyncIterator[bytes]:
        yield b"first,"
        yield b""  # an empty piece must not end the body early
        await asyncio.sleep(0.01)
        yield b"second," * 50_000
        yield b"last"

    async with serve(handler) as port, pool_for(port) as pool:
        response = await pool.request("PUT", "/upload", [], body())
        assert await response.read() == b"thanks"
        again = await pool.request("GET", "/", [])
        await again.read()
        assert pool.opened == 1
    assert got[0] == ("chunked", b"first," + b"second," * 50_000 + b"last")


async def test_early_answer_stops_the_upload() -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await reader.read()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"z" * 1024
                await asyncio.sleep(0.005)
        finally:
            closed.set()

    async with Raw(script) as server, pool_for(server.port) as pool:
        response = await pool.request("POST", "/", [], endless())
        assert (response.status, await response.read()) == (413, b"big")
        assert closed.is_set()
        assert (pool.in_use, pool.idle) == (0, 0)  # the request was never finished


async def test_answer_before_the_whole_body_was_sent_stops_reuse() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)  # keep-alive, yet most of the body is still on its way
        await reader.read()

    async with Raw(script) as server, pool_for(server.port) as pool:
        response = await pool.request("POST", "/", [], b"b" * (64 * 1024 * 1024))
        assert (response.status, await response.read()) == (200, b"ok")
        assert (pool.in_use, pool.idle) == (0, 0)


# --- the keep-alive race ---------------------------------------------------------------------


async def test_stale_connection_is_retried_once_on_a_fresh_one() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await read_request(reader)
            writer.write(OK)
            # The next request finds the server closing the connection, as if idle too long.
            await read_request(reader)
            return
        await answer_each(OK)(reader, writer, n)

    async with Raw(script) as server, pool_for(server.port) as pool:
        await (await pool.request("POST", "/", [], b"1")).read()
        response = await pool.request("POST", "/", [], b"2")
        assert (response.status, await response.read()) == (200, b"ok")
        assert pool.stale_retries == 1
        assert server.connections == 2
        assert (pool.in_use, pool.idle, pool.opened) == (0, 1, 2)


async def test_connection_closed_while_idle_leaves_the_pool() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)  # keep-alive by the headers, closed right after all the same

    async with Raw(script) as server, pool_for(server.port) as pool:
        await (await pool.request("GET", "/", [])).read()
        await settle()
        assert (pool.idle, pool.in_use) == (0, 0)
        await (await pool.request("GET", "/", [])).read()
        assert pool.stale_retries == 0
        assert server.connections == 2


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_no_retry_once_part_of_the_head_arrived(how: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-")
        await writer.drain()
        await asyncio.sleep(0.01)
        if how == "rst":
            reset(writer)

    async with Raw(script) as server, pool_for(server.port) as pool:
        await (await pool.request("GET", "/", [])).read()
        with pytest.raises(UpstreamUnavailable, match="before answering"):
            await pool.request("GET", "/", [])
        assert pool.stale_retries == 0
        assert server.connections == 1
        assert (pool.in_use, pool.idle) == (0, 0)


async def test_no_retry_on_a_fresh_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    async with Raw(script) as server, pool_for(server.port) as pool:
        with pytest.raises(UpstreamUnavailable):
            await pool.request("GET", "/", [])
        assert (pool.stale_retries, server.connections) == (0, 1)


async def test_no_retry_for_a_streamed_body() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await reader.readuntil(b"\r\n\r\n")

    async def body() -> AsyncIterator[bytes]:
        yield b"once"

    async with Raw(script) as server, pool_for(server.port) as pool:
        await (await pool.request("GET", "/", [])).read()
        with pytest.raises(UpstreamUnavailable):
            await pool.request("POST", "/", [], body())
        assert pool.stale_retries == 0


# --- failures --------------------------------------------------------------------------------


async def test_refused_connection() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        async with pool_for(sock.getsockname()[1]) as pool:
            with pytest.raises(UpstreamUnavailable, match="cannot connect"):
                await pool.request("GET", "/", [])
            assert pool.in_use == 0


async def test_reset_before_the_head() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        reset(writer)

    async with Raw(script) as server, pool_for(server.port) as pool:
        with pytest.raises(UpstreamUnavailable):
            await pool.request("GET", "/", [])
        assert pool.in_use == 0


@pytest.mark.parametrize(
    ("raw", "how"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "rst"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "fin"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n", "fin"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\nzz\r\n", "wait"),
        (b"HTTP/1.1 200 OK\r\n\r\npartial", "rst"),
    ],
    ids=["cl-reset", "cl-eof", "chunked-eof", "bad-chunk", "until-eof-reset"],
)
async def test_body_cut_short_is_a_body_error(raw: bytes, how: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.05)
        if how == "rst":
            reset(writer)
        elif how == "wait":
            await reader.read()

    async with Raw(script) as server, pool_for(server.port) as pool:
        response = await pool.request("GET", "/", [])
        with pytest.raises(BodyError):
            await response.read()
        assert (pool.in_use, pool.idle) == (0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage that is not HTTP\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    ],
    ids=["garbage", "bad-status", "negative-length", "bad-length", "two-lengths", "upgrade"],
)
async def test_invalid_http_is_unavailable(raw: bytes) -> None:
    async with Raw(answer_each(raw)) as server, pool_for(server.port) as pool:
        with pytest.raises(UpstreamUnavailable):
            await pool.request("GET", "/", [])
        assert (pool.in_use, pool.idle) == (0, 0)


async def test_oversized_head_is_unavailable() -> None:
    whole = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n"
    many = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 3000 + b"Content-Length: 0\r\n\r\n"

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:
            writer.write(b"X-More: " + b"b" * 1000 + b"\r\n")
            await writer.drain()

    for script in (answer_each(whole), answer_each(many), endless):
        async with Raw(script) as server, pool_for(server.port, max_header_bytes=16 * 1024) as pool:
            with pytest.raises(UpstreamUnavailable, match="head is over 16384 bytes"):
                await pool.request("GET", "/", [])
            assert pool.in_use == 0


# --- cancellation and limits ---------------------------------------------------------------


async def test_cancel_mid_body_closes_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        await reader.read()  # hangs until the client goes

    async with Raw(script) as server, pool_for(server.port) as pool:
        response = await pool.request("GET", "/", [])
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await response.read()
        assert (pool.in_use, pool.idle) == (0, 0)
        await settle()
        assert not pool._conns
    assert no_other_tasks()


async def test_cancel_while_waiting_for_the_head() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        await reader.read()

    async with Raw(script) as server, pool_for(server.port) as pool:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.request("POST", "/", [], b"{}")
        assert (pool.in_use, pool.idle, pool.waiting) == (0, 0, 0)
        await settle()
        assert not pool._conns
    assert no_other_tasks()


async def test_at_most_max_connections_and_waiters_served_in_order() -> None:
    arrivals: asyncio.Queue[int] = asyncio.Queue(maxsize=5)
    gate = asyncio.Semaphore(0)
    peers: set[object] = set()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        await arrivals.put(int(request.headers["X-N"]))
        await gate.acquire()
        return web.Response(text=request.headers["X-N"])

    async def call(pool: Pool, n: int) -> bytes:
        return await (await pool.request("GET", "/", [("X-N", str(n))])).read()

    async with serve(handler) as port, pool_for(port, max_connections=2) as pool:
        async with asyncio.TaskGroup() as group, asyncio.timeout(5):
            tasks = []
            for n in range(5):
                tasks.append(group.create_task(call(pool, n)))
                await asyncio.sleep(0)
            assert {await arrivals.get(), await arrivals.get()} == {0, 1}
            assert (pool.in_use, pool.waiting) == (2, 3)
            for expected in (2, 3, 4):
                gate.release()  # one answer: its connection goes to the first in line
                assert await arrivals.get() == expected
            for _ in range(2):
                gate.release()
        assert [task.result() for task in tasks] == [b"0", b"1", b"2", b"3", b"4"]
        assert len(peers) == pool.opened == 2
        assert (pool.in_use, pool.idle, pool.waiting) == (0, 2, 0)


async def test_cancelled_waiter_leaves_the_line() -> None:
    async with Raw(answer_each(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsl")) as server:
        async with pool_for(server.port, max_connections=1) as pool:
            first = await pool.request("GET", "/", [])  # holds the only connection
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await pool.request("GET", "/", [])
            assert (pool.in_use, pool.waiting) == (1, 0)
            first.close()
            assert pool.in_use == 0


async def test_close_fails_waiters_and_refuses_requests() -> None:
    async with Raw(answer_each(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsl")) as server:
        pool = pool_for(server.port, max_connections=1)
        first = await pool.request("GET", "/", [])

        async def wait_in_line() -> None:
            with pytest.raises(UpstreamUnavailable, match="closed"):
                await pool.request("GET", "/", [])

        async with asyncio.TaskGroup() as group:
            group.create_task(wait_in_line())
            await asyncio.sleep(0.01)
            assert pool.waiting == 1
            await pool.close()
        with pytest.raises(BodyError):
            await first.read()
        with pytest.raises(UpstreamUnavailable, match="closed"):
            await pool.request("GET", "/", [])
        assert (pool.in_use, pool.idle, pool.waiting) == (0, 0, 0)


async def test_idle_connections_expire() -> None:
    async with (
        Raw(answer_each(OK, OK)) as server,
        pool_for(server.port, keepalive_timeout_s=0.1) as pool,
    ):
        await (await pool.request("GET", "/", [])).read()
        assert pool.idle == 1
        await asyncio.sleep(0.3)  # the sweep closes it
        assert (pool.idle, pool.in_use) == (0, 0)
        await (await pool.request("GET", "/", [])).read()
        assert pool.opened == 2


async def test_expired_connection_is_never_checked_out() -> None:
    async with Raw(answer_each(OK, OK)) as server, pool_for(server.port) as pool:
        await (await pool.request("GET", "/", [])).read()
        pool._idle[0].idle_since -= 60  # as if it had been idle past the timeout
        await (await pool.request("GET", "/", [])).read()
        assert (pool.opened, pool.stale_retries) == (2, 0)


# --- TLS -------------------------------------------------------------------------------------


def _tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts for a certificate valid for 127.0.0.1 only."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client = ssl.create_default_context()
    try:
        trustme = importlib.import_module("trustme")
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("TLS test needs trustme or the openssl command to make a certificate")
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        server.load_cert_chain(cert, key)
        client.load_verify_locations(cert)
    else:
        authority = trustme.CA()
        authority.issue_cert("127.0.0.1").configure_cert(server)
        authority.configure_trust(client)
    return server, client


async def test_https_upstream(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_contexts(tmp_path)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=(await request.read()) * 2)

    async with serve(handler, server_tls) as port:
        async with Pool(
            "127.0.0.1", port, max_connections=2, keepalive_timeout_s=30, ssl=client_tls
        ) as pool:
            for body in (b"secure", b"again"):
                response = await pool.request("POST", "/", [], body)
                assert await response.read() == body * 2
            assert pool.opened == 1
        async with Pool(
            "localhost", port, max_connections=1, keepalive_timeout_s=30, ssl=client_tls
        ) as pool:
            with pytest.raises(UpstreamUnavailable, match="cannot connect"):
                await pool.request("GET", "/", [])  # the certificate does not name "localhost"


# --- the same on uvloop ----------------------------------------------------------------------

ON_UVLOOP: list[Callable[[], Coroutine[Any, Any, None]]] = [
    test_keepalive_reuses_one_socket,
    test_interim_and_final_answer_in_separate_packets,
    test_first_chunk_arrives_before_the_server_finishes,
    test_slow_reader_pauses_the_socket_and_memory_stays_bounded,
    test_endless_chunked_body_is_cut_by_read_capped,
    test_streamed_request_body_is_sent_chunked,
    test_early_answer_stops_the_upload,
    test_stale_connection_is_retried_once_on_a_fresh_one,
    test_connection_closed_while_idle_leaves_the_pool,
    test_reset_before_the_head,
    test_cancel_mid_body_closes_the_connection,
    test_at_most_max_connections_and_waiters_served_in_order,
    test_idle_connections_expire,
]


@pytest.mark.parametrize("case", ON_UVLOOP, ids=lambda case: case.__name__.removeprefix("test_"))
def test_on_uvloop(case: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())


def test_https_on_uvloop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test_https_upstream(tmp_path))
