"""A lean HTTP/1.1 client for upstream calls: keep-alive connection pools over asyncio.

Why not aiohttp's client: under load half of the proxy's CPU went into it (two client
calls per proxied request). A proxy needs much less than a general client: write the
request it is given (adding only ``Host`` and body framing), parse the answer with
llhttp (``httptools``), pass the bytes through undecoded, reuse the connection.

    Pool.request()  checkout: newest idle connection | a new one | wait in line (FIFO)
                    write head + body  ->  wait for the response head  ->  Response
    Response        read() | iter_chunks() | read_capped()  ->  connection back to the pool

The rules, and why:

* A connection goes back to the pool only when its response was complete on the wire,
  keep-alive, and nothing odd happened; anything else closes it. A doubtful connection
  costs one handshake, a reused bad one corrupts somebody else's answer.
* Timeouts are the caller's (``asyncio.timeout``). A cancellation anywhere closes the
  connection and frees its slot; nothing here spawns a task or leaves a future behind.
* A reused connection that dies before any response byte arrives lost the keep-alive
  race (the server closed it while idle, as we wrote). The request is sent once more on
  a fresh connection when its body can be sent again (bytes, not a stream).

Errors: ``UpstreamUnavailable`` when no usable response head arrives (connect failure,
reset, invalid HTTP, head too large); ``BodyError`` when the body does not arrive whole;
``ValueError`` before anything is written for a request unsafe to write (CR/LF in a
header, a name that is not a token, framing headers the client owns).
"""

from __future__ import annotations

import asyncio
import re
import ssl as ssl_module
import warnings
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from types import TracebackType
from typing import Final, cast

import httptools

from shadowproxy.errors import ShadowproxyError, UpstreamUnavailable

Headers = Sequence[tuple[str, str]]
Body = bytes | AsyncIterable[bytes] | None

# Reading pauses when this much body is buffered unread, and resumes below the low mark:
# a slow consumer holds at most about the high mark plus one socket read in memory.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
# How long close() waits for the sockets to be released before it returns.
_CLOSE_GRACE_S: Final = 1.0
# The idle sweep runs this much after the oldest connection expires, so that one run
# closes a batch. Checkout checks expiry itself, so no expired connection is ever used.
_SWEEP_SLACK_S: Final = 0.05
# A small body is sent with its head in one write (one syscall); a large one is not
# copied for that.
_JOIN_BELOW: Final = 16 * 1024

# aiohttp's rule, kept so the switch changes nothing upstream sees: a request without a
# body sends ``Content-Length: 0`` unless its method has no body by definition.
_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_FRAMING_NAMES: Final = frozenset({"content-length", "transfer-encoding"})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE: Final = re.compile(r"[\r\n\0]")
# Tokens (header names, methods) already checked, with what they are to the client.
# Real traffic repeats a few dozen names, so checking costs one dict lookup; the cap
# keeps a stream of odd names from growing it.
_ORDINARY, _HOST, _FRAMING = 0, 1, 2
_tokens: dict[str, int] = {}
_TOKENS_MAX: Final = 4096


class BodyError(ShadowproxyError):
    """The response head arrived but the body did not arrive whole.

    A reset or EOF mid-body, fewer bytes than ``Content-Length``, a malformed chunk.
    Raised by ``Response.read``, ``iter_chunks`` and ``read_capped``.
    """


class _Unsolicited(Exception):
    """Raised inside a parser callback to stop at bytes that belong to no request."""


# --- the request head (pure) -------------------------------------------------------------


def request_framing(method: str, body: object) -> str | None:
    """The framing header line for ``body``: the client owns framing, never the caller."""
    if body is None:
        return None if method in _BODYLESS_METHODS else "Content-Length: 0"
    if isinstance(body, bytes | bytearray):
        return f"Content-Length: {len(body)}"
    return "Transfer-Encoding: chunked"


def encode_request(
    method: str, target: str, headers: Headers, host: str, framing: str | None
) -> bytes:
    """The request head as bytes; ``ValueError`` if it would be unsafe to write.

    One join and one encode. CR, LF and NUL anywhere but the separators are found by
    counting over the joined text (two C-speed scans) rather than per header. Text is
    encoded UTF-8 with surrogateescape: the inverse of how aiohttp's server decodes
    headers, so a client's header bytes reach the upstream unchanged.
    """
    if method not in _tokens:
        _token_kind(method, "method")
    if not target or " " in target:
        raise ValueError(f"request target {target!r} is empty or contains a space")
    lines = [f"{method} {target} HTTP/1.1"]
    have_host = False
    for name, value in headers:
        kind = _tokens.get(name)
        if kind is None:
            kind = _token_kind(name, "header name")
        if kind:
            if kind == _FRAMING:
                raise ValueError(f"{name} is set from the body; do not pass it")
            have_host = True
        lines.append(f"{name}: {value}")
    if not have_host:
        lines.append(f"Host: {host}")
    if framing is not None:
        lines.append(framing)
    lines += ("", "")
    text = "\r\n".join(lines)
    separators = len(lines) - 1
    if text.count("\n") != separators or text.count("\r") != separators or "\0" in text:
        raise ValueError(_unsafe_part(target, headers))
    return text.encode("utf-8", "surrogateescape")


def _token_kind(text: str, what: str) -> int:
    """Check that ``text`` is a token and remember what kind of name it is."""
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not an HTTP token")
    lower = text.lower()
    kind = _HOST if lower == "host" else _FRAMING if lower in _FRAMING_NAMES else _ORDINARY
    if len(_tokens) < _TOKENS_MAX:
        _tokens[text] = kind
    return kind


def _unsafe_part(target: str, headers: Headers) -> str:
    for name, value in headers:
        if _UNSAFE.search(value):
            return f"header {name!r} contains CR, LF or NUL (header injection)"
    return f"request target {target!r} contains CR, LF or NUL"


def host_header(host: str, port: int, tls: bool) -> str:
    """``Host`` for an origin: the port only when not the scheme's default."""
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if tls else 80) else f"{name}:{port}"


# --- one connection -----------------------------------------------------------------------


class _Conn(asyncio.Protocol):
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

    def __init__(self, pool: Pool) -> None:
        self._loop = pool.loop
        self._max_head = pool.max_header_bytes
        self._on_idle_lost = pool._forget_idle
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
        if self.is_head or status in _NO_BODY_STATUSES:
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


# --- the response -------------------------------------------------------------------------


class Response:
    """An upstream answer: the head at once, the body on demand.

    Read the body with one of ``read``, ``iter_chunks`` or ``read_capped``, or give it
    up with ``release``/``close``; ``async with`` releases on exit. The connection goes
    back to the pool once the body has been read to its end, or at once when it had
    arrived whole with the head (the common case for small answers). A response that is
    neither read to the end nor released keeps its connection's pool slot.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_pool",
        "chunked",
        "content_length",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        content_length: int | None,
        chunked: bool,
        chunks: deque[bytes],
        pool: Pool,
        conn: _Conn | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        """Raw order, duplicates kept; names as sent, values decoded like aiohttp does."""
        self.content_length = content_length
        """As declared by the upstream (for HEAD: the length a GET would have)."""
        self.chunked = chunked
        self._chunks = chunks
        self._pool = pool
        self._conn = conn

    async def read(self) -> bytes:
        """The rest of the body, whole. Consumes it."""
        if self._conn is None:
            body = b"".join(self._chunks)
            self._chunks.clear()
            return body
        chunks = []
        while chunk := await self._next():
            chunks.append(chunk)
        return b"".join(chunks)

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (de-chunked), with backpressure on the socket."""
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._next()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read_capped(self, cap: int) -> tuple[bytes, bool]:
        """Up to ``cap`` bytes of body and whether there was more.

        Stops reading at the cap: a truncated body's connection is closed, not drained.
        """
        chunks: list[bytes] = []
        size = 0
        while chunk := await self._next():
            size += len(chunk)
            if size > cap:
                chunks.append(chunk[: cap - (size - len(chunk))])
                self.close()
                return b"".join(chunks), True
            chunks.append(chunk)
        return b"".join(chunks), False

    def release(self) -> None:
        """Done with this answer: its connection is reused if its body ended, else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn)

    def close(self) -> None:
        """Done with this answer and its connection, which is closed whatever its state."""
        conn, self._conn = self._conn, None
        self._chunks.clear()
        if conn is not None:
            self._pool._drop(conn)

    async def _next(self) -> bytes:
        conn = self._conn
        if conn is None:
            return self._chunks.popleft() if self._chunks else b""
        try:
            chunk = await conn.next_chunk()
        except BaseException:
            self.close()  # cancelled, timed out or broken: never back to the pool
            raise
        if not chunk:
            self.release()
        return chunk

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.release()
        else:
            self.close()

    def __del__(self) -> None:
        if self._conn is not None:
            warnings.warn(
                f"response {self.status} dropped unreleased: its pool slot is lost",
                ResourceWarning,
                stacklevel=1,
            )


# --- the pool -----------------------------------------------------------------------------


class Pool:
    """Keep-alive connections to one upstream (``host:port``, plain or TLS).

    At most ``max_connections`` exist at once (connecting, in use or idle). The newest
    idle connection is used first (it is the least likely to have been closed by the
    server). When all are busy, callers wait in line, first come first served; a waiter
    is bounded only by its own timeout (``asyncio.timeout`` around ``request``), so the
    line is as long as the caller's concurrency allows. Idle connections close after
    ``keepalive_timeout_s``: keep it below the upstream's own idle timeout.

    Create it inside the running loop; ``await close()`` (or ``async with``) at the end.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        keepalive_timeout_s: float,
        ssl: ssl_module.SSLContext | bool | None = None,
        max_header_bytes: int = 64 * 1024,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if keepalive_timeout_s <= 0:
            raise ValueError(f"keepalive_timeout_s must be > 0 seconds, got {keepalive_timeout_s}")
        if max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be at least 1024, got {max_header_bytes}")
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_header_bytes = max_header_bytes
        if isinstance(ssl, ssl_module.SSLContext):
            self._ssl: ssl_module.SSLContext | None = ssl
        else:
            self._ssl = ssl_module.create_default_context() if ssl else None
        self._host_header = host_header(host, port, self._ssl is not None)
        self._idle: list[_Conn] = []  # oldest first; checkout takes the newest
        self._conns: set[_Conn] = set()
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._slots = 0  # connections connecting, in use or idle
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self.opened = 0
        """Connections opened so far (a counter for metrics)."""
        self.stale_retries = 0
        """Requests sent again after losing the keep-alive race (a counter for metrics)."""

    @property
    def in_use(self) -> int:
        """Connections checked out or being opened."""
        return self._slots - len(self._idle)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def request(
        self, method: str, target: str, headers: Headers, body: Body = None
    ) -> Response:
        """Send one request and return the answer once its head has arrived.

        ``target`` is the raw path and query, sent byte for byte. ``headers`` go out in
        order as given; only ``Host`` (unless given) and the framing for ``body`` are
        added: ``Content-Length`` for bytes, chunked for an async iterable.
        """
        head = encode_request(
            method, target, headers, self._host_header, request_framing(method, body)
        )
        is_head = method == "HEAD"
        conn = self._pop_idle()
        if conn is not None:
            reused = True
        else:
            conn, reused = await self._checkout()
        try:
            return await self._exchange(conn, is_head, head, body)
        except UpstreamUnavailable:
            if not reused or conn.received or not isinstance(body, bytes | bytearray | None):
                self._drop(conn)
                raise
        except BaseException:
            self._drop(conn)
            raise
        # Lost the keep-alive race: the server closed this connection as we wrote to it,
        # so it answered nothing. Once more, on a new connection (in the same slot).
        self.stale_retries += 1
        conn = await self._replace(conn)
        try:
            return await self._exchange(conn, is_head, head, body)
        except BaseException:
            self._drop(conn)
            raise

    async def close(self) -> None:
        """Close every connection and fail every waiter; later requests are refused."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamUnavailable("the connection pool was closed"))
        idle, self._idle = self._idle, []
        self._slots -= len(idle)
        for conn in idle:
            conn.in_pool = False
        closing = [conn.closed for conn in self._conns]
        for conn in list(self._conns):
            conn.abort()  # in-use ones too: their readers get an error and drop them
        if closing:
            await asyncio.wait(closing, timeout=_CLOSE_GRACE_S)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- one exchange

    async def _exchange(self, conn: _Conn, is_head: bool, head: bytes, body: Body) -> Response:
        conn.begin(is_head)
        if conn.error is not None:
            raise conn.error
        if body is None:
            conn.transport.write(head)
        elif isinstance(body, bytes | bytearray):
            if len(body) <= _JOIN_BELOW:
                conn.transport.write(head + body)
            else:
                conn.transport.writelines((head, body))
        else:
            await conn.send_stream(head, body)
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            await conn.wait()
        return self._response(conn)

    def _response(self, conn: _Conn) -> Response:
        headers = conn.headers
        reason = conn.reason.decode("latin-1")
        if not conn.body_done:
            chunks: deque[bytes] = deque()
            return Response(
                conn.status, reason, headers, conn.length, conn.chunked, chunks, self, conn
            )
        # The whole answer came with its head: the connection can serve the next caller now.
        chunks, conn.chunks = conn.chunks, deque()
        conn.buffered = 0
        self._release(conn)
        return Response(conn.status, reason, headers, conn.length, conn.chunked, chunks, self, None)

    # -- checkout and return

    async def _checkout(self) -> tuple[_Conn, bool]:
        """A connection and whether it served requests before."""
        if self._closed:
            raise UpstreamUnavailable("the connection pool was closed")
        if self._slots < self.max_connections and not self._waiters:
            self._slots += 1
            return await self._connect_in_slot(), False
        waiter: asyncio.Future[_Conn | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            self._leave_line(waiter)
            raise
        if conn is None:  # a slot was passed on to us, not a connection
            return await self._connect_in_slot(), False
        return conn, True

    def _leave_line(self, waiter: asyncio.Future[_Conn | None]) -> None:
        """A waiter gave up; if it was handed something meanwhile, pass that on."""
        if not waiter.done() or waiter.cancelled():
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        elif waiter.exception() is None:
            handed = waiter.result()
            if handed is None:
                self._free_slot()
            else:
                self._release(handed)

    def _pop_idle(self) -> _Conn | None:
        idle = self._idle
        if not idle:
            return None
        conn = idle[-1]
        now = self.loop.time()
        if conn.idle_since <= now - self.keepalive_timeout_s:
            self._expire(now)  # the newest has expired, so all have
            return None
        idle.pop()
        conn.in_pool = False
        return conn

    def _release(self, conn: _Conn) -> None:
        """An exchange is over: reuse the connection if it is clean, else close it."""
        conn.end()
        if self._closed or not conn.reusable:
            self._drop(conn)
            return
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(conn)
            return
        conn.in_pool = True
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        self._arm_sweep()

    def _drop(self, conn: _Conn) -> None:
        """Close a checked-out connection and pass its slot on."""
        conn.end()
        conn.abort()
        self._free_slot()

    def _free_slot(self) -> None:
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(None)  # the slot goes straight to the next in line
        else:
            self._slots -= 1

    def _next_waiter(self) -> asyncio.Future[_Conn | None] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _forget_idle(self, conn: _Conn) -> None:
        """An idle connection died (closed by the server, or sent stray bytes)."""
        conn.in_pool = False
        self._idle.remove(conn)
        self._free_slot()

    # -- opening and expiring

    async def _connect_in_slot(self) -> _Conn:
        """Open a connection in a slot already counted; the slot is freed on failure."""
        try:
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    async def _connect(self) -> _Conn:
        server_hostname = self.host if self._ssl is not None else None
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Conn(self),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=server_hostname,
            )
        except OSError as exc:
            raise UpstreamUnavailable(
                f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}"
            ) from exc
        if self._closed:
            conn.abort()
            raise UpstreamUnavailable("the connection pool was closed")
        self.opened += 1
        self._conns.add(conn)
        conn.closed.add_done_callback(lambda _: self._conns.discard(conn))
        return conn

    async def _replace(self, conn: _Conn) -> _Conn:
        conn.end()
        conn.abort()
        return await self._connect_in_slot()

    def _expire(self, now: float) -> None:
        """Close idle connections past the keep-alive timeout (the oldest come first)."""
        idle = self._idle
        cutoff = now - self.keepalive_timeout_s
        count = 0
        while count < len(idle) and idle[count].idle_since <= cutoff:
            count += 1
        expired = idle[:count]
        del idle[:count]
        for conn in expired:
            conn.in_pool = False
            conn.abort()
            self._free_slot()

    def _arm_sweep(self) -> None:
        if self._sweep is None and self._idle:
            due = self._idle[0].idle_since + self.keepalive_timeout_s + _SWEEP_SLACK_S
            self._sweep = self.loop.call_at(due, self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        self._expire(self.loop.time())
        self._arm_sweep()
