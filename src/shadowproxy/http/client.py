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
import ssl as ssl_module
import warnings
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Final

from shadowproxy.errors import UpstreamUnavailable
from shadowproxy.http.connection import (
    Connection,
)
from shadowproxy.http.request_head import Headers, encode_request, host_header, request_framing

Body = bytes | AsyncIterable[bytes] | None

# How long close() waits for the sockets to be released before it returns.
_CLOSE_GRACE_S: Final = 1.0
# The idle sweep runs this much after the oldest connection expires, so that one run
# closes a batch. Checkout checks expiry itself, so no expired connection is ever used.
_SWEEP_SLACK_S: Final = 0.05
# A small body is sent with its head in one write (one syscall); a large one is not
# copied for that.
_JOIN_BELOW: Final = 16 * 1024


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
        conn: Connection | None,
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
        self._idle: list[Connection] = []  # oldest first; checkout takes the newest
        self._conns: set[Connection] = set()
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
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

    async def _exchange(self, conn: Connection, is_head: bool, head: bytes, body: Body) -> Response:
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

    def _response(self, conn: Connection) -> Response:
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

    async def _checkout(self) -> tuple[Connection, bool]:
        """A connection and whether it served requests before."""
        if self._closed:
            raise UpstreamUnavailable("the connection pool was closed")
        if self._slots < self.max_connections and not self._waiters:
            self._slots += 1
            return await self._connect_in_slot(), False
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            self._leave_line(waiter)
            raise
        if conn is None:  # a slot was passed on to us, not a connection
            return await self._connect_in_slot(), False
        return conn, True

    def _leave_line(self, waiter: asyncio.Future[Connection | None]) -> None:
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

    def _pop_idle(self) -> Connection | None:
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

    def _release(self, conn: Connection) -> None:
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

    def _drop(self, conn: Connection) -> None:
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

    def _next_waiter(self) -> asyncio.Future[Connection | None] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _forget_idle(self, conn: Connection) -> None:
        """An idle connection died (closed by the server, or sent stray bytes)."""
        conn.in_pool = False
        self._idle.remove(conn)
        self._free_slot()

    # -- opening and expiring

    async def _connect_in_slot(self) -> Connection:
        """Open a connection in a slot already counted; the slot is freed on failure."""
        try:
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    async def _connect(self) -> Connection:
        server_hostname = self.host if self._ssl is not None else None
        try:
            _, conn = await self.loop.create_connection(
                lambda: Connection(self.loop, self.max_header_bytes, self._forget_idle),
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

    async def _replace(self, conn: Connection) -> Connection:
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
