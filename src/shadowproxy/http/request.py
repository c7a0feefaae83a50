"""What the handler sees of a client request: its headers, a body stream, and the
calls that answer it (``reply`` in one write, or ``start``/``write``/``end`` to stream).

The connection underneath (``server.HttpConnection``) is reached through the small
``ClientConnection`` protocol, so this module needs nothing from the server.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

# Body bytes buffered for a handler that has not read them yet before the socket is
# paused (TCP backpressure reaches the client instead of this process's memory).
BODY_HIGH_WATER = 256 * 1024


class ClientConnection(Protocol):
    """The connection a request arrived on, as the request uses it."""

    loop: asyncio.AbstractEventLoop
    remote: str | None
    body_timeout_s: float
    closing: bool
    lost: bool

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    async def send(self, data: bytes) -> None: ...
    def response_done(self, request: HttpRequest, close: bool) -> None: ...
    def abort(self) -> None: ...


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

    def __init__(self, conn: ClientConnection) -> None:
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
        conn: ClientConnection,
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
        head = response_head(status, reason, headers, framing, close)
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
        head = response_head(status, reason, headers, framing, close)
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


def response_head(
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
