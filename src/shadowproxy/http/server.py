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

Protocol upgrades: an offer of anything but WebSocket (``Upgrade: h2c``, sent by
``curl --http2`` and Java's HttpClient on every cleartext request) is ignored and the
request served as HTTP/1.1, as RFC 9110 section 7.8 allows. WebSocket and ``CONNECT``
get 501: a tunnel has no request/response pair to copy or compare, and the lean client
cannot hand a connection over.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import httptools

from shadowproxy.http.error_json import error_answer
from shadowproxy.http.headers import REQUEST_ID, new_request_id, valid_request_id
from shadowproxy.http.request import (
    BODY_HIGH_WATER,
    HttpRequest,
    RequestBodyError,
    RequestHeaders,
    response_head,
)
from shadowproxy.tasks import TaskSet

log = logging.getLogger(__name__)

Handler = Callable[["HttpRequest"], Awaitable[None]]
RejectCounter = Callable[[str], None]

LINGER_S = 2.0
"""After an error answer, how long the rest of a refused request is read and dropped."""


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
        # An upgrade offer stops llhttp after the head (httptools skips the body): what
        # to answer instead, or the framing of the body a new parser must read.
        self._refused: tuple[str, str | None] | None = None
        self._body_head: bytes | None = None
        self._replaying = False
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
        while True:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                framing = self._upgrade_ignored()
                if framing is None:
                    return
                data = framing + data[exc.args[0] :]
                if not data:
                    return
            except (httptools.HttpParserCallbackError, httptools.HttpParserError) as exc:
                if isinstance(exc.__context__, _HeadTooLarge):
                    limit = self._limits.max_header_bytes
                    self._reject(431, f"request head exceeds {limit} bytes", "header_too_large")
                else:
                    self._reject(400, f"invalid HTTP request: {exc}", "bad_request")
                return

    def _upgrade_ignored(self) -> bytes | None:
        """llhttp stopped after a request offering an upgrade. A refused offer is
        answered 501 (None: nothing more to read). Any other is ignored: a new parser
        reads the rest, after the returned head that gives it the request's body framing
        (empty for a request without a body)."""
        refused, self._refused = self._refused, None
        if refused is not None:
            message, request_id = refused
            self._reject(501, message, "upgrade", request_id)
            return None
        self._parser = httptools.HttpRequestParser(self)
        head, self._body_head = self._body_head, None
        self._replaying = head is not None
        return head or b""

    # --- parser callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._replaying:
            # Only the framing of a skipped body: the request it belongs to exists.
            self._url, self._headers, self._head_bytes = [], [], 0
            return
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
        if self._replaying:
            self._replaying = False
            return
        self._in_head = False
        parser = self._parser
        method = parser.get_method().decode("ascii")
        if parser.should_upgrade():
            # feed_data raises HttpParserUpgrade after this request's (empty) message.
            message = _refused_upgrade(method, self._headers)
            if message is not None:
                request_id = RequestHeaders(self._headers).get(REQUEST_ID)
                self._refused = (message, request_id if valid_request_id(request_id) else None)
                return
            self._body_head = _body_framing(self._headers)
        request = HttpRequest(
            self,
            method,
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
        if self._body_head is not None:
            return  # llhttp skipped the body of an ignored upgrade offer: it comes next
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

    def _reject(
        self, status: int, message: str, reason: str, request_id: str | None = None
    ) -> None:
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
        self.write(_error_bytes(status, message, request_id))
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


def _error(
    status: int, message: str, request_id: str | None = None
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """An error answer from the listener: the client's request id when it sent a valid
    one, else a new one."""
    return (status, *error_answer(status, message, request_id or new_request_id()))


def _error_bytes(status: int, message: str, request_id: str | None = None) -> bytes:
    status, reason, headers, body = _error(status, message, request_id)
    return response_head(status, reason, headers, f"Content-Length: {len(body)}\r\n", True) + body


def _refused_upgrade(method: str, headers: list[tuple[str, str]]) -> str | None:
    """Why a request llhttp flags as an upgrade is refused; None to serve it as HTTP/1.1.

    Only a tunnel is refused: there is no request/response pair in it to copy to the
    shadows, and a WebSocket client expects ``101``, so HTTP/1.1 would only confuse it.
    """
    if method == "CONNECT":
        return "CONNECT is not supported: shadowproxy is a reverse proxy, not a tunnel"
    for name, value in headers:
        if name.lower() == "upgrade":
            offered = (token.split("/", 1)[0].strip().lower() for token in value.split(","))
            if "websocket" in offered:
                return (
                    "WebSocket is not supported: shadowproxy proxies HTTP request/response "
                    "traffic; connect WebSocket clients to production directly"
                )
    return None


def _body_framing(headers: list[tuple[str, str]]) -> bytes | None:
    """A head carrying only a request's body framing, for a parser to read that body
    (httptools skips the body of an upgrade offer); None for a request without one.
    llhttp has already refused conflicting framing in the real head."""
    framing = [
        f"{name}: {value}\r\n"
        for name, value in headers
        if name.lower() in ("content-length", "transfer-encoding")
    ]
    if not framing:
        return None
    head = "POST / HTTP/1.1\r\n" + "".join(framing) + "\r\n"
    return head.encode("utf-8", "surrogateescape")


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
