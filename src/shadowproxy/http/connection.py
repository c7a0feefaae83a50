"""One upstream connection: the llhttp callbacks, the body buffer, flow control.

``Pool`` (in ``client``) owns connections and hands them to requests; ``Response``
reads through one. Nothing here spawns a task: timeouts and cancellation are the
caller's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import Final, cast

import httptools

from shadowproxy.errors import ShadowproxyError, UpstreamUnavailable

# Reading pauses when this much body is buffered unread, and resumes below the low mark:
# a slow consumer holds at most about the high mark plus one socket read in memory.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
NO_BODY_STATUSES: Final = frozenset({204, 304})


class BodyError(ShadowproxyError):
    """The response head arrived but the body did not arrive whole.

    A reset or EOF mid-body, fewer bytes than ``Content-Length``, a malformed chunk.
    Raised by ``Response.read``, ``iter_chunks`` and ``read_capped``.
    """


class _Unsolicited(Exception):
    """Raised inside a parser callback to stop at bytes that belong to no request."""


class Connection(asyncio.Protocol):
    """One upstream connection: the llhttp callbacks, the body buffer, flow control.

    One exchange at a time. State is plain attributes; the one coroutine using the
    connection sleeps on ``_waiter``, which every event wakes, and re-checks the state.
    Errors are stored here and raised by that coroutine, never put in a future, so none
    can go unretrieved.
    """

    __slots__ = (
        "_loop",
        "_max_head",
        "_on_idle_lost",
        "_parser",
        "_read_paused",
        "_waiter",
        "_write_paused",
        "active",
        "body_done",
        "buffered",
        "chunked",
        "chunks",
        "closed",
        "error",
        "head_done",
        "head_seen",
        "headers",
        "idle_since",
        "in_pool",
        "interim",
        "is_head",
        "keep_alive",
        "length",
        "lost",
        "raw_headers",
        "reason",
        "received",
        "request_incomplete",
        "status",
        "transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_header_bytes: int,
        on_idle_lost: Callable[[Connection], None],
    ) -> None:
        self._loop = loop
        self._max_head = max_header_bytes
        self._on_idle_lost = on_idle_lost
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self.transport = cast(asyncio.Transport, None)
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.in_pool = False
        self.idle_since = 0.0
        self.lost = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.active = self.is_head = self.received = self.interim = False
        self.head_done = self.body_done = self.keep_alive = self.request_incomplete = False
        self.error: ShadowproxyError | None = None
        self.head_seen = 0
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None
        self.chunked = False

    # -- the exchange, as the pool drives it

    def begin(self, is_head: bool) -> None:
        """Start an exchange. A HEAD answer leaves llhttp expecting a body, so its
        parser is never reused: the next exchange gets a new one."""
        if self._parser is None or self.is_head:
            self._parser = httptools.HttpResponseParser(self)
        self.active = True
        self.is_head = is_head
        self.received = self.head_done = self.body_done = self.interim = False
        self.keep_alive = self.request_incomplete = False
        self.head_seen = 0
        if (self.lost or self.transport.is_closing()) and self.error is None:
            self.error = UpstreamUnavailable("upstream closed the idle connection")

    def end(self) -> None:
        """The exchange is over: drop unread body, listen again for EOF while idle."""
        self.active = False
        self.chunks.clear()
        self.buffered = 0
        if self._read_paused:
            self._read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    @property
    def reusable(self) -> bool:
        # Unsent request bytes mean the upstream answered before reading the whole
        # request: on reuse it would read them as the start of the next one.
        return (
            self.keep_alive
            and self.body_done
            and self.error is None
            and not self.request_incomplete
            and not self.lost
            and not self.transport.is_closing()
            and not self.transport.get_write_buffer_size()
        )

    def abort(self) -> None:
        self.keep_alive = False
        if not self.lost:
            self.transport.abort()

    async def send_stream(self, head: bytes, body: AsyncIterable[bytes]) -> None:
        """Write a streamed body chunked, honouring the socket's backpressure.

        Stops early when the upstream has answered already (say a 413) or failed; the
        connection is then not reused, since its request was never finished.
        """
        transport = self.transport
        transport.write(head)
        iterator = aiter(body)
        async for chunk in iterator:
            if self.head_done or self.error is not None:
                break
            if chunk:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                while self._write_paused and not self.head_done and self.error is None:
                    await self.wait()
        else:
            if self.error is None:
                transport.write(b"0\r\n\r\n")
            return
        self.request_incomplete = True
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()

    async def next_chunk(self) -> bytes:
        """The next piece of body as it arrived; ``b""`` at its end."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.body_done:
                return b""
            await self.wait()
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self._read_paused and self.buffered <= LOW_WATER:
            self._read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        return chunk

    async def wait(self) -> None:
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: ShadowproxyError) -> None:
        if self.error is None:
            self.error = error
        self.abort()
        if self.in_pool:
            self._on_idle_lost(self)
        self._wake()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.body_done:
            self._stray()
            return
        self.received = True
        # Bytes that carry no body (the head, chunk framing, trailers) are counted until
        # the next body byte: llhttp would buffer an endless header line without limit.
        self.head_seen += len(data)
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamUnavailable("upstream switched protocols; upgrades are not proxied"))
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        if self.head_seen > self._max_head and not self.body_done and self.error is None:
            self._fail(self._head_too_large())
        self._wake()

    def _stray(self) -> None:
        """Bytes that answer no request: the connection's framing can't be trusted."""
        self.keep_alive = False
        if not self.active:
            self._fail(UpstreamUnavailable("upstream sent data on an idle connection"))

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__
        if self.body_done:
            # The answer is whole; what follows it (a second answer, a body after HEAD,
            # bytes after "Connection: close") is not ours, so the framing is doubtful.
            self.keep_alive = False
        elif isinstance(cause, ShadowproxyError):
            self._fail(cause)
        elif self.head_done:
            self._fail(BodyError(f"invalid response body from upstream: {exc}"))
        else:
            self._fail(UpstreamUnavailable(f"invalid HTTP response from upstream: {exc}"))

    def _head_too_large(self) -> ShadowproxyError:
        if self.head_done:
            return BodyError(f"upstream chunk framing or trailers over {self._max_head} bytes")
        return UpstreamUnavailable(f"upstream response head is over {self._max_head} bytes")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost decides what EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.keep_alive = False
        if not self.closed.done():
            self.closed.set_result(None)
        if self.active and self.error is None and not self.body_done:
            self._ended_early(exc)
        if self.in_pool:
            self._on_idle_lost(self)
        self._parser = None  # the parser holds our bound methods: break the cycle
        self._wake()

    def _ended_early(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc is not None else ""
        if not self.head_done:
            self.error = UpstreamUnavailable(
                f"upstream closed the connection before answering{why}"
            )
        elif exc is None and self.length is None and not self.chunked:
            self.body_done = True  # a body without framing ends where the connection does
        else:
            self.error = BodyError(f"upstream closed the connection mid-body{why}")

    # -- llhttp callbacks (httptools calls them from feed_data)

    def on_message_begin(self) -> None:
        if self.head_done:
            raise _Unsolicited  # a second answer to one request
        self.raw_headers = []
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only collected here: the head is read in one pass when it is complete, and
        # trailers (collected after it) are dropped, as aiohttp does.
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = cast(httptools.HttpResponseParser, self._parser)
        status = parser.get_status_code()
        if status < 200:
            self.interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            return
        self._read_head()
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True
        if self.is_head or status in NO_BODY_STATUSES:
            self.body_done = True

    def _read_head(self) -> None:
        """Check the head's size, decode its headers (as aiohttp does), find the framing."""
        raw = self.raw_headers
        # Counting is needed only when the bytes read so far could hold a head too large.
        too_many = self.head_seen > self._max_head
        if too_many and sum(len(n) + len(v) + 4 for n, v in raw) > self._max_head:
            raise self._head_too_large()
        self.headers = [
            (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
            for name, value in raw
        ]
        self.length = None
        self.chunked = False
        for name, value in raw:
            if len(name) in (14, 17):
                lower = name.lower()
                if lower == b"content-length":
                    self.length = int(value)  # llhttp validated it: digits, a single value
                elif lower == b"transfer-encoding":
                    self.chunked = value.rpartition(b",")[2].strip().lower() == b"chunked"

    def on_body(self, body: bytes) -> None:
        if self.body_done:
            raise _Unsolicited  # a body after HEAD, 204 or 304
        self.chunks.append(body)
        self.buffered += len(body)
        self.head_seen = 0
        if self.buffered > HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
        else:
            self.body_done = True
