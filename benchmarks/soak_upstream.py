"""A model server whose behaviour the soak switches at runtime: healthy, slow, black-holed.

One process per upstream, raw asyncio with llhttp (httptools) framing, so serving a
few hundred requests per second costs almost no CPU on a shared machine. Every answer
is the benchmarks' KServe-style ``RESPONSE_BODY``. The mode applies per request:

* ``healthy``: answer at once;
* ``slow``: answer after ``--delay-ms``;
* ``blackhole``: read the request, never answer (the connection stays open until the
  client gives up).

Control, answered in every mode::

    POST /_soak/mode/<mode>   -> 200, switches the mode
    GET  /_soak/stats         -> 200 {"mode": ..., "received": {mode: requests}}

    python benchmarks/soak_upstream.py --port 8123 [--mode healthy] [--delay-ms 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import cast

import httptools
from upstreams import RESPONSE_BODY, SLOW_DELAY_MS

from shadowproxy.loop import run_loop

MODES = ("healthy", "slow", "blackhole")
CONTROL = b"/_soak/"


def response(body: bytes, status: str = "200 OK") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


ANSWER = response(RESPONSE_BODY.encode())


class State:
    def __init__(self, mode: str, delay_s: float) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.received: Counter[str] = Counter()

    def control(self, url: bytes) -> bytes:
        path = url.decode(errors="replace")
        mode = path.removeprefix("/_soak/mode/")
        if mode in MODES:
            self.mode = mode
            return response(json.dumps({"mode": mode}).encode())
        if path == "/_soak/stats":
            return response(json.dumps({"mode": self.mode, "received": self.received}).encode())
        return response(b'{"error": "unknown control path"}', "404 Not Found")


class Upstream(asyncio.Protocol):
    """One client connection; answers in order, one request at a time."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(response(b'{"error": "bad request"}', "400 Bad Request"))
            if self._transport is not None:
                self._transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        url, self._url = self._url, b""
        state = self._state
        if url.startswith(CONTROL):
            self._send(state.control(url))
            return
        state.received[state.mode] += 1
        if state.mode == "healthy":
            self._send(ANSWER)
        elif state.mode == "slow":
            asyncio.get_running_loop().call_later(state.delay_s, self._send, ANSWER)

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


async def serve(port: int, state: State) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(state), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A switchable upstream for the soak.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="healthy")
    parser.add_argument("--delay-ms", type=float, default=SLOW_DELAY_MS)
    args = parser.parse_args(argv)
    run_loop(serve(args.port, State(args.mode, args.delay_ms / 1000.0)))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
