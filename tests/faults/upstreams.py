"""Upstreams that misbehave on purpose: raw asyncio servers on loopback, one fault each.

Raw sockets rather than aiohttp, so every byte on the wire is the test's choice. Each
behaviour is a coroutine over one accepted connection. ``serve`` runs a behaviour,
counts connections, keeps the raw requests it received, and at exit cancels what is
still running (each handler closes its socket as it ends), so a test can count file
descriptors after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Behaviour = Callable[["Faulty", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# What the well-behaved parts of these upstreams answer.
ANSWER = b'{"predictions": [1.0]}'
# A body the chunked and event-stream behaviours repeat; numbered so reordering shows.
TICK = b"data: tick %06d\n\n"


@dataclass
class Faulty:
    """A running faulty upstream and what it saw."""

    url: str = ""
    accepted: int = 0
    """Connections accepted so far."""
    open: int = 0
    """Connections still open."""
    requests: list[bytes] = field(default_factory=list)
    """Each complete request received: head and (de-chunked) body, raw."""
    partial: int = 0
    """Requests whose head arrived but whose body never arrived whole."""
    answered: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no connection is open."""

    async def all_closed(self, within_s: float = 3.0) -> None:
        """Wait until every connection to us has been closed (by the proxy, mostly)."""
        await asyncio.wait_for(self.idle.wait(), within_s)


@contextlib.asynccontextmanager
async def serve(behaviour: Behaviour) -> AsyncIterator[Faulty]:
    faulty = Faulty()
    faulty.idle.set()
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        faulty.accepted += 1
        faulty.open += 1
        faulty.idle.clear()
        try:
            await behaviour(faulty, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the proxy hung up: for these servers that is part of the test
        except asyncio.CancelledError:
            # Stopped at exit. Ending quietly: asyncio (3.11) logs an error for a
            # cancelled connection handler.
            pass
        finally:
            faulty.open -= 1
            if not faulty.open:
                faulty.idle.set()
            writer.transport.abort()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    faulty.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield faulty
    finally:
        server.close()
        await server.wait_closed()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


# --- reading requests ----------------------------------------------------------------


async def read_request(faulty: Faulty, reader: asyncio.StreamReader) -> bytes | None:
    """One whole request (head and body) or None when the connection ends first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
            faulty.partial += 1
        return None
    try:
        body = await _read_body(reader, head)
    except (asyncio.IncompleteReadError, ConnectionError):
        faulty.partial += 1
        return None
    faulty.requests.append(head + body)
    return head + body


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if fields.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers
        return body
    return await reader.readexactly(int(fields.get(b"content-length", b"0")))


async def until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN: SO_LINGER on, zero seconds."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


REASONS = {200: "OK", 500: "Internal Server Error", 503: "Service Unavailable"}


def response(status: int, body: bytes, *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS[status]}", *headers, f"Content-Length: {len(body)}"]
    return "\r\n".join([*lines, "", ""]).encode() + body


# --- behaviours ------------------------------------------------------------------------


LARGE = 8 * 1024 * 1024
PIECE = 64 * 1024


async def model(faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A healthy keep-alive upstream; a few paths answer slowly or at length.

    ``...:slow`` answers after 0.3 s, ``...:large`` sends 8 MiB with a Content-Length in
    64 KiB pieces 10 ms apart, ``...:stream`` is an event stream that never ends.
    """
    while (request := await read_request(faulty, reader)) is not None:
        target = request.split(b" ", 2)[1]
        if target.endswith(b":stream"):
            await stream_forever(writer, "text/event-stream")
            return
        if target.endswith(b":large"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % LARGE)
            for _ in range(LARGE // PIECE):
                writer.write(b"x" * PIECE)
                await writer.drain()
                await asyncio.sleep(0.01)
        else:
            if target.endswith(b":slow"):
                await asyncio.sleep(0.3)
            writer.write(response(200, ANSWER, "Content-Type: application/json"))
        faulty.answered += 1


async def resets_before_headers(
    faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await read_request(faulty, reader)
    reset(writer)


async def resets_mid_body(
    faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``Content-Length: 1000``, 10 bytes of body, then a reset."""
    await read_request(faulty, reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    writer.write(b'{"predicti')
    await writer.drain()
    await asyncio.sleep(0.05)
    reset(writer)


async def resets_mid_stream(
    faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A chunked answer cut by a reset after its first chunk."""
    await read_request(faulty, reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(chunk(TICK % 0))
    await writer.drain()
    await asyncio.sleep(0.1)
    reset(writer)


async def never_answers(
    faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await read_request(faulty, reader)
    await until_closed(reader)


async def drips(faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A valid answer, one byte a second."""
    await read_request(faulty, reader)
    for byte in response(200, ANSWER, "Content-Type: application/json"):
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(1.0)


GARBAGE = (b"HTTP/1.1 abc\r\n\r\n", b"NOT HTTP\r\n\r\n")


async def answers_garbage(
    faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Invalid HTTP: a status line without a status, then no status line at all."""
    await read_request(faulty, reader)
    writer.write(GARBAGE[faulty.answered % len(GARBAGE)])
    faulty.answered += 1
    await writer.drain()
    await until_closed(reader)


def endless_chunks(content_type: str) -> Behaviour:
    """A chunked answer that never ends."""

    async def endless(
        faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(faulty, reader)
        await stream_forever(writer, content_type)

    return endless


async def stream_forever(writer: asyncio.StreamWriter, content_type: str) -> None:
    """A chunked head, then one numbered piece every 10 ms until the peer goes away."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
        % content_type.encode()
    )
    number = 0
    while not writer.is_closing():
        writer.write(chunk(TICK % number))
        number += 1
        await writer.drain()
        await asyncio.sleep(0.01)


def answers_status(status: int) -> Behaviour:
    """Production's own error, kept alive for the next request."""

    async def failing(
        faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(faulty, reader) is not None:
            writer.write(status_answer(status))
            faulty.answered += 1

    return failing


def status_answer(status: int) -> bytes:
    return response(
        status, status_body(status), "Content-Type: application/json", "X-Model-State: degraded"
    )


def status_body(status: int) -> bytes:
    return b'{"error": "model overloaded", "code": %d}' % status


async def closes_when_idle(
    faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answers keep-alive (no ``Connection: close``), then closes the connection at once."""
    await read_request(faulty, reader)
    writer.write(response(200, ANSWER, "Content-Type: application/json"))
    faulty.answered += 1
    await writer.drain()
    writer.close()


async def closes_on_reuse(
    faulty: Faulty, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answers one request, then closes when the next one arrives on the same connection:
    the keep-alive race lost by the client every time."""
    await read_request(faulty, reader)
    writer.write(response(200, ANSWER, "Content-Type: application/json"))
    faulty.answered += 1
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)
