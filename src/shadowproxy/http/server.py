"""The proxy listener: a lean HTTP/1.1 server on httptools (llhttp).

This is the hot path. A general-purpose server builds per request what a proxy never
uses (header multidicts, URL objects, response state machines); measured on this
code's benchmark, aiohttp's server cost about 100 CPU-µs per request against 15 for
this protocol. The handler gets the method, the raw target, the header list and a
body stream, and answers with raw bytes. The admin listener stays on aiohttp.

What a client can do wrong is answered here, before any handler runs: malformed
requests and request smuggling (``Content-Length`` with ``Transfer-Encoding``, which
llhttp refuses) get 400, oversized request heads 431, a head that does not arrive in
time (slowloris) 408; each is counted and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import httptools

from shadowproxy.http.error_json import error_answer
from shadowproxy.http.headers import new_request_id
from shadowproxy.tasks import TaskSet

log = logging.getLogger(__name__)

Handler = Callable[["HttpRequest"], Awaitable[None]]
RejectCounter = Callable[[str], None]

LINGER_S = 2.0
"""After an error answer, how long the rest of a refused request is read and dropped."""
# Body bytes buffered for a handler that has not read them yet before the socket is
# paused (TCP backpressure reaches the client instead of this process's memory).
BODY_HIGH_WATER = 256 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int = 64 * 1024
    """Request line plus headers; over it the client gets 431."""
    header_timeout_s: float = 30.0
    """From a request's first byte (or the connection's) to the end of its head."""
    keepalive_timeout_s: float = 75.0
    """An idle client connection is closed after this long."""
    body_timeout_s: float = 60.0
    """Longest wait for the next piece of a request body (a stalled upload)."""


class RequestBodyError(ConnectionError):
    """The request body cannot be read: the client left, stalled or sent invalid framing.

    ``status`` is what the client gets if it is still there: 400, or 408 for a stall.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RequestHeaders(Mapping[str, str]):
    """The client's headers in arrival order, looked up case-insensitively."""

    __slots__ = ("_index", "raw")

    def __init__(self, raw: list[tuple[str, str]]) -> None:
        self.raw = raw
        self._index: dict[str, str] | None = None

    def _lookup(self) -> dict[str, str]:
        if self._index is None:
            index: dict[str, str] = {}
            for name, value in self.raw:
                index.setdefault(name.lower(), value)
            self._index = index
        return self._index

    def __getitem__(self, name: str) -> str:
        return self._lookup()[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._lookup().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup()

    def __iter__(self) -> Iterator[str]:
        return iter(self._lookup())

    def __len__(self) -> int:
        return len(self._lookup())

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        """Every header as sent, duplicates included (a Mapping's view would merge them)."""
        return self.raw


class Body:
    """The request body as it arrives; reading it lets the socket read more."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter")

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: RequestBodyError | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def error(self) -> RequestBodyError | None:
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return self._size

    @property
    def arrived(self) -> bool:
        """All of it is in (read or not): the next bytes belong to the next request."""
        return self._done and self._error is None

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > BODY_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: RequestBodyError) -> None:
        if not self._done:
            self._error = error
            self._done = True
            self._wake()

    def _stalled(self) -> None:
        limit = self._conn.body_timeout_s
        self.fail(RequestBodyError(f"request body stalled for {limit:g}s", status=408))
        self._conn.closing = True  # the rest of this body must not be read as a request

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read_chunk(self) -> bytes:
        """The next piece of the body; ``b""`` once it is complete."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            # Only a body that has not arrived waits, so only it pays for the timer.
            loop = self._conn.loop
            self._waiter = loop.create_future()
            timer = loop.call_later(self._conn.body_timeout_s, self._stalled)
            try:
                await self._waiter
            finally:
                self._waiter = None
                timer.cancel()
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size <= BODY_HIGH_WATER:
            self._conn.resume_reading()
        return chunk

    async def __aiter__(self) -> Any:
        while chunk := await self.read_chunk():
            yield chunk


class HttpRequest:
    """One request and the means to answer it (once)."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_state",
        "body",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "remote",
        "target",
        "version",
    )

    def __init__(
        self,
        conn: HttpConnection,
        method: str,
        target: str,
        version: str,
        headers: RequestHeaders,
        content_length: int | None,
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.remote = conn.remote
        self.body = Body(conn)
        self.expect_continue = False
        self._state = 0  # 0: nothing sent, 1: head sent (streaming), 2: done
        self._chunked = False

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def disconnected(self) -> bool:
        return self._conn.lost

    @property
    def responded(self) -> bool:
        return self._state != 0

    @property
    def finished(self) -> bool:
        return self._state == 2

    def reply(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        content_length: int | None = None,
    ) -> None:
        """The whole response in one write. ``content_length`` without ``body``
        describes a body not sent (the answer to a HEAD)."""
        if self._state != 0:
            raise RuntimeError("response already started")
        length = len(body) if content_length is None else content_length
        bodiless = status < 200 or status in (204, 304)
        framing = "" if bodiless and not length else f"Content-Length: {length}\r\n"
        close = not self.keep_alive or self._conn.closing
        head = _head(status, reason, headers, framing, close)
        self._state = 2
        self._conn.write(head + body if body and self.method != "HEAD" else head)
        self._conn.response_done(self, close)

    def start(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        content_length: int | None,
    ) -> None:
        """Send the head of a streamed response; the body follows with ``write``."""
        if self._state != 0:
            raise RuntimeError("response already started")
        close = not self.keep_alive or self._conn.closing
        if content_length is not None:
            framing = f"Content-Length: {content_length}\r\n"
        elif self.version == "1.1":
            framing = "Transfer-Encoding: chunked\r\n"
        else:
            framing, close = "", True  # an HTTP/1.0 client: the body ends at close
        head = _head(status, reason, headers, framing, close)
        self._state = 1
        self.keep_alive = not close
        self._chunked = framing.startswith("Transfer-Encoding")
        self._conn.write(head)

    async def write(self, chunk: bytes) -> None:
        """Send part of a streamed body, waiting while the client reads slowly."""
        if not chunk:
            return
        if self._chunked:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        await self._conn.send(chunk)

    def end(self) -> None:
        if self._state != 1:
            raise RuntimeError("no streamed response to end")
        self._state = 2
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        self._conn.response_done(self, not self.keep_alive)

    def abort(self) -> None:
        """Cut the connection: the client sees an incomplete response, not a clean end."""
        self._state = 2
        self._conn.abort()


def _head(
    status: int, reason: str, headers: list[tuple[str, str]], framing: str, close: bool
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append(framing)
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    # As ``http1`` decodes upstream heads: bytes pass through unchanged, UTF-8 or not.
    return "".join(lines).encode("utf-8", "surrogateescape")


class _HeadTooLarge(Exception):
    pass


class HttpConnection(asyncio.Protocol):
    """One client connection: parse requests, run the handler for each, in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self.body_timeout_s = server.limits.body_timeout_s
        self.loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.closing = False
        self.lingering = False
        self.lost = False
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Parsing state of the request whose bytes are arriving.
        self._url: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._in_head = False
        self._head_raw = 0
        self._content_length: int | None = None
        self._expect_continue = False
        self._parsing: HttpRequest | None = None
        # The request being answered, and those pipelined behind it.
        self._current: HttpRequest | None = None
        self._pipeline: deque[HttpRequest] = deque()

    # --- transport events -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self._server.connections.add(self)
        self._set_timer(self._limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._server.connections.discard(self)
        self._cancel_timer()
        error = RequestBodyError("client disconnected")
        for request in (self._parsing, self._current, *self._pipeline):
            if request is not None:
                request.body.fail(error)
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.lingering or (self.closing and self._current is None and self._parsing is None):
            return
        if self._in_head:
            # httptools holds a header line until it ends: bound the head by raw bytes too.
            self._head_raw += len(data)
            if self._head_raw > self._limits.max_header_bytes:
                limit = self._limits.max_header_bytes
                self._reject(431, f"request head exceeds {limit} bytes", "header_too_large")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "protocol upgrades are not supported", "upgrade")
        except (httptools.HttpParserCallbackError, httptools.HttpParserError) as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                limit = self._limits.max_header_bytes
                self._reject(431, f"request head exceeds {limit} bytes", "header_too_large")
            else:
                self._reject(400, f"invalid HTTP request: {exc}", "bad_request")

    # --- parser callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_raw = 0
        if self._current is None:
            # The head must arrive within the timeout, counted from its first byte.
            self._set_timer(self._limits.header_timeout_s, self._head_timed_out)
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._content_length = None
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.max_header_bytes:
            raise _HeadTooLarge
        # As ``http1`` encodes them upstream: bytes pass through unchanged.
        key = name.decode("utf-8", "surrogateescape")
        text = value.decode("utf-8", "surrogateescape")
        self._headers.append((key, text))
        if len(key) == 14 and key.lower() == "content-length":
            self._content_length = int(text) if text.isdigit() else None
        elif len(key) == 6 and key.lower() == "expect":
            self._expect_continue = text.lower() == "100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        if parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next
        request = HttpRequest(
            self,
            parser.get_method().decode("ascii"),
            b"".join(self._url).decode("utf-8", "surrogateescape"),
            parser.get_http_version(),
            RequestHeaders(self._headers),
            self._content_length,
            parser.should_keep_alive(),
        )
        request.expect_continue = self._expect_continue and request.version == "1.1"
        self._parsing = request
        if self._current is None:
            self._cancel_timer()
            self._dispatch(request)
        else:
            # One request waits its turn; more wait in the socket. Reading otherwise
            # goes on while a request is answered, so a client leaving is noticed.
            self._pipeline.append(request)
            self.pause_reading()

    def on_body(self, chunk: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body.feed(chunk)

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None:
            request.body.finish()

    # --- answering --------------------------------------------------------------

    def _dispatch(self, request: HttpRequest) -> None:
        self._current = request
        if request.expect_continue and not request.body.arrived:
            # Now, not when its head arrived: a pipelined request's interim answer must
            # not land inside the response before it.
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._server.tasks.spawn(self._run(request), name="http-request")

    async def _run(self, request: HttpRequest) -> None:
        try:
            await self._server.handler(request)
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.target)
            if not request.responded:
                request.reply(*_error(500, "internal error in the proxy"))
            elif not request.finished:
                request.abort()
            return
        if not request.finished:
            request.abort()

    def response_done(self, request: HttpRequest, close: bool) -> None:
        if request is not self._current:
            return
        self._current = None
        if close or self.closing or not request.body.arrived:
            # An unread body would be parsed as the next request: close instead.
            self._close()
            return
        if self._pipeline:
            self._dispatch(self._pipeline.popleft())
        elif self._in_head:
            self._set_timer(self._limits.header_timeout_s, self._head_timed_out)
        else:
            self._set_timer(self._limits.keepalive_timeout_s, self._close)
        self.resume_reading()

    def write(self, data: bytes) -> None:
        if not self.lost and self._transport is not None:
            self._transport.write(data)

    async def send(self, data: bytes) -> None:
        if self.lost:
            raise ConnectionResetError("client disconnected")
        assert self._transport is not None
        self._transport.write(data)
        while self._writable is not None and not self.lost:
            await asyncio.shield(self._writable)
        if self.lost:
            raise ConnectionResetError("client disconnected")

    def _reject(self, status: int, message: str, reason: str) -> None:
        """A request that never reaches a handler: answer it, count it, close."""
        self._server.count_rejected(reason)
        request = self._parsing
        if request is not None:
            request.body.fail(RequestBodyError(message))
            if request in self._pipeline:
                self._pipeline.remove(request)
        if self._current is not None:
            # A handler is answering (maybe streaming this very body: it sees the
            # error and answers); the connection closes after its response.
            self.closing = True
            self.pause_reading()
            return
        self.write(_error_bytes(status, message))
        self._linger()

    def _linger(self) -> None:
        """Close after an error answer without losing it: a close with unread bytes in
        the socket sends a reset, which can destroy the answer before the client reads
        it. So: send FIN after the answer, discard what still arrives, close on the
        client's EOF or after ``LINGER_S``."""
        self.closing = self.lingering = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._cancel_timer()
        self._timer = self.loop.call_later(LINGER_S, self._close)

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._parsing is None and self._current is None:
            if self._in_head:
                limit = self._limits.header_timeout_s
                self._server.count_rejected("header_timeout")
                self.write(_error_bytes(408, f"request head not received within {limit:g}s"))
                self._linger()
                return
            self._close()

    # --- flow control and closing -----------------------------------------------

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self.lost:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self.lost:
            if self._pipeline:
                return  # a request already waits its turn: more can wait in the socket
            if self._parsing is not None and self._parsing.body.buffered > BODY_HIGH_WATER:
                return
            self._reading_paused = False
            self._transport.resume_reading()

    def shutdown(self) -> None:
        """Close when idle: now if no request is in hand, else after its response."""
        self.closing = True
        if self._current is None and self._parsing is None:
            self._close()

    def _close(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _error(status: int, message: str) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """An error answer for a request the handler never saw (so it gets a new id)."""
    return (status, *error_answer(status, message, new_request_id()))


def _error_bytes(status: int, message: str) -> bytes:
    status, reason, headers, body = _error(status, message)
    return _head(status, reason, headers, f"Content-Length: {len(body)}\r\n", True) + body


class HttpServer:
    """The listening socket, its connections and the handler tasks."""

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits | None = None,
        count_rejected: RejectCounter | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.count_rejected: RejectCounter = count_rejected or (lambda reason: None)
        self.connections: set[HttpConnection] = set()
        self.tasks = TaskSet()
        self._server: asyncio.Server | None = None

    async def listen(
        self, host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False
    ) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self, timeout_s: float) -> None:
        """Stop accepting, close idle connections, let requests in hand finish."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        await self.tasks.drain(timeout_s)
        for conn in list(self.connections):
            conn.abort()
        # Give the transports a turn to deliver connection_lost.
        await asyncio.sleep(0)
