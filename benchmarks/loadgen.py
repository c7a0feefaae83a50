"""HTTP/1.1 load generator: open loop at a fixed rate (no coordinated omission), or closed loop.

Open loop (``--rate R``): request *i* is due at ``t0 + i/R`` whether or not earlier
answers have arrived. A request waits for a free keep-alive connection if it has to, and
its latency counts from when it was due, not from when it was finally sent: a stall in
the system under test shows in every request that queued behind it, which a closed-loop
tool such as wrk hides (coordinated omission). Event-loop timers tick in whole
milliseconds, so requests are handed out up to one tick early and timed from
``min(due, sent)``; a late hand-out (the generator itself falling behind) is measured as
*dispatch lag* and reported, so a run where the generator could not keep up says so.

Closed loop (``--rate 0``): every connection sends back to back, latency from the send;
the fallback for maximum throughput when wrk is not installed.

Runs in its own process on uvloop and prints one JSON object on stdout::

    python benchmarks/loadgen.py http://127.0.0.1:8080/v1/models/m:predict \\
        --rate 1500 --duration 10 --connections 64 --body '{"instances": [[1, 2]]}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from shadowproxy.loop import run_loop

TICK_S = 0.001
"""Timer granularity of the event loop; requests due within one tick are sent now."""
MAX_DISPATCH_LAG_P50_S = 0.001
"""A generator whose typical hand-out is later than this is behind its schedule. (Its
p99 is mostly the machine's scheduling noise, reported but not held against it.)"""
RECONNECT_BACKOFF_S = 0.01
MAX_CPU_SHARE = 0.9
"""A generator busier than this share of one core is its own bottleneck."""

clock = time.perf_counter


# --- HTTP/1.1 response framing (pure) ----------------------------------------------


class ProtocolError(Exception):
    """The server sent something this minimal client does not frame."""


@dataclass(frozen=True)
class Head:
    status: int
    length: int | None
    chunked: bool
    keep_alive: bool


def parse_head(raw: bytes) -> Head:
    """Status line and headers (without the blank line) -> what framing needs."""
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip().lower()
    length = headers.get(b"content-length")
    connection = headers.get(b"connection", b"")
    keep_alive = connection != b"close" and (parts[0] == b"HTTP/1.1" or connection == b"keep-alive")
    return Head(
        status=int(parts[1]),
        length=int(length) if length is not None else None,
        chunked=b"chunked" in headers.get(b"transfer-encoding", b""),
        keep_alive=keep_alive,
    )


class ResponseParser:
    """Incremental framing of responses to non-HEAD requests: Content-Length or chunked."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head: Head | None = None
        self._remaining = 0
        self._state = "head"

    def feed(self, data: bytes) -> list[Head]:
        """Add bytes; return the heads of the responses they completed."""
        self._buffer += data
        done: list[Head] = []
        while self._step(done):
            pass
        return done

    def _step(self, done: list[Head]) -> bool:
        if self._state == "head":
            return self._read_head(done)
        if self._state in ("body", "chunk"):
            return self._skip_body(done)
        if self._state == "size":
            return self._read_chunk_size(done)
        return self._read_trailer(done)

    def _read_head(self, done: list[Head]) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = parse_head(bytes(self._buffer[:end]))
        del self._buffer[: end + 4]
        if 100 <= head.status < 200:
            return True  # interim response: the real one follows
        self._head = head
        if head.status in (204, 304) or head.length == 0:
            self._finish(done)
        elif head.chunked:
            self._state = "size"
        elif head.length is None:
            raise ProtocolError("response without Content-Length or chunked framing")
        else:
            self._state, self._remaining = "body", head.length
        return True

    def _skip_body(self, done: list[Head]) -> bool:
        taken = min(self._remaining, len(self._buffer))
        del self._buffer[:taken]
        self._remaining -= taken
        if self._remaining:
            return False
        if self._state == "body":
            self._finish(done)
        else:
            self._state = "size"
        return True

    def _read_chunk_size(self, done: list[Head]) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        size = int(bytes(self._buffer[:end]).split(b";")[0], 16)
        del self._buffer[: end + 2]
        if size == 0:
            self._state = "trailer"
        else:
            self._state, self._remaining = "chunk", size + 2  # data and its CRLF
        return True

    def _read_trailer(self, done: list[Head]) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        del self._buffer[: end + 2]
        if end == 0:
            self._finish(done)
        return True

    def _finish(self, done: list[Head]) -> None:
        assert self._head is not None
        done.append(self._head)
        self._head, self._state = None, "head"


# --- statistics (pure) --------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..1); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_ms(values_s: Sequence[float]) -> dict[str, float]:
    """Seconds -> p50/p90/p99/p99.9/max in milliseconds."""
    ordered = sorted(values_s)
    points = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999, "max": 1.0}
    return {name: round(percentile(ordered, q) * 1000.0, 4) for name, q in points.items()}


def keeping_up(lag_p50_ms: float, dispatched_late_s: float, cpu_share: float) -> str | None:
    """Why an open-loop generator did not hold its schedule, or None when it did."""
    if lag_p50_ms > MAX_DISPATCH_LAG_P50_S * 1000.0:
        return f"dispatch lag p50 {lag_p50_ms:.2f} ms"
    if dispatched_late_s > 0.1:
        return f"finished handing out requests {dispatched_late_s:.2f} s late"
    if cpu_share > MAX_CPU_SHARE:
        return f"generator used {cpu_share:.0%} of a core"
    return None


# --- the client ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    request: bytes


def build_target(url: str, method: str, body: bytes) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise SystemExit(f"loadgen: only http://host:port/path URLs, got {url!r}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return Target(parts.hostname, port, head.encode() + body)


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self._parser = ResponseParser()
        self._waiter: asyncio.Future[Head] | None = None
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            heads = self._parser.feed(data)
        except (ProtocolError, ValueError) as exc:
            self._fail(exc)
            self.close()
            return
        for head in heads:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def request(self, payload: bytes) -> Head:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(payload)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


async def connect(target: Target) -> Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(Connection, target.host, target.port)
    return protocol


@dataclass
class Tally:
    """What the workers saw; times in seconds."""

    latencies: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    ok: int = 0
    last_done: float = 0.0
    status_errors: int = 0
    socket_errors: int = 0
    in_flight: dict[int, float] = field(default_factory=dict)

    def record(self, due: float, sent: float, done: float, status: int) -> None:
        self.latencies.append(done - min(due, sent))
        self.service.append(done - sent)
        self.last_done = done
        if 200 <= status < 300:
            self.ok += 1
        else:
            self.status_errors += 1


NextDue = Callable[[], Awaitable[float | None]]


async def worker(wid: int, target: Target, next_due: NextDue, tally: Tally) -> None:
    """Take the next due time, send on this worker's connection, record; reconnect on errors."""
    conn: Connection | None = None
    while (due := await next_due()) is not None:
        # Left in place if the run is cancelled mid-request: the request is unfinished.
        tally.in_flight[wid] = due
        try:
            if conn is None or conn.closed:
                conn = await _reconnect(target)
            sent = clock()
            head = await conn.request(target.request)
        except (OSError, ProtocolError, ValueError):
            del tally.in_flight[wid]
            tally.socket_errors += 1
            conn = None
            continue
        del tally.in_flight[wid]
        tally.record(due, sent, clock(), head.status)
        if not head.keep_alive:
            conn.close()
    if conn is not None:
        conn.close()


async def _reconnect(target: Target) -> Connection:
    try:
        return await connect(target)
    except OSError:
        # Refused: back off a little rather than spin on connect() for the whole run.
        await asyncio.sleep(RECONNECT_BACKOFF_S)
        raise


class _Stop(Exception):
    """Leaves the task group once the run is over, cancelling the workers still waiting."""


async def supervise(
    workers: list[Coroutine[Any, Any, None]], feed: Awaitable[None], deadline: float
) -> None:
    """Run the workers and ``feed``; once fed, wait for the workers until ``deadline``,
    then cancel those still waiting for an answer."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro) for coro in workers]
            await feed
            await asyncio.wait(tasks, timeout=max(0.0, deadline - clock()))
            raise _Stop
    except* _Stop:
        pass


async def dispatch(
    queue: asyncio.Queue[float | None], rate: float, t0: float, total: int, lags: list[float]
) -> float:
    """Put due times on the queue on schedule; return when the last one went out.

    ``lags`` gets how late each hand-out was: the generator's own lateness. Time spent
    in the queue waiting for a free connection is the system's, and counts as latency.
    """
    sent = 0
    while sent < total:
        now = clock()
        while sent < total and (due := t0 + sent / rate) <= now + TICK_S:
            queue.put_nowait(due)
            lags.append(max(0.0, now - due))
            sent += 1
        if sent < total:
            # uvloop rounds sub-millisecond sleeps down to zero: never sleep less than a tick.
            await asyncio.sleep(max(TICK_S, t0 + sent / rate - clock() - TICK_S))
    return clock()


async def open_loop(
    target: Target, rate: float, duration: float, connections: int, grace: float
) -> dict[str, Any]:
    total = int(rate * duration)
    queue: asyncio.Queue[float | None] = asyncio.Queue(maxsize=total + connections)
    tally = Tally()
    await check_listening(target)
    cpu_before = cpu_seconds()
    t0 = clock() + 0.05
    late = 0.0

    async def feed() -> None:
        nonlocal late
        late = await dispatch(queue, rate, t0, total, tally.lags) - (t0 + duration)
        for _ in range(connections):
            queue.put_nowait(None)  # one stop sign per worker, after the last request

    workers = [worker(wid, target, queue.get, tally) for wid in range(connections)]
    await supervise(workers, feed(), t0 + duration + grace)
    stop = clock()
    unfinished = _waiting(queue) + list(tally.in_flight.values())
    tally.latencies.extend(stop - due for due in unfinished)  # lower bounds
    # An overloaded system answers the last requests long after the schedule ended:
    # requests per second are answers over the time they took, not over the schedule.
    span = max(duration, tally.last_done - t0)
    report = _report(tally, "open", rate, span, connections, len(unfinished))
    return report | _generator(tally, late, (cpu_seconds() - cpu_before) / duration)


async def closed_loop(
    target: Target, duration: float, connections: int, grace: float
) -> dict[str, Any]:
    tally = Tally()
    await check_listening(target)
    deadline = clock() + duration

    async def next_due() -> float | None:
        now = clock()
        return now if now < deadline else None

    workers = [worker(wid, target, next_due, tally) for wid in range(connections)]
    await supervise(workers, asyncio.sleep(duration), deadline + grace)
    return _report(tally, "closed", 0.0, duration, connections, len(tally.in_flight))


async def check_listening(target: Target) -> None:
    """Fail fast, before the clock starts, when nothing listens."""
    conn = await connect(target)
    conn.close()


def _waiting(queue: asyncio.Queue[float | None]) -> list[float]:
    return [due for due in list(queue._queue) if due is not None]  # type: ignore[attr-defined]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report(
    tally: Tally, mode: str, rate: float, duration: float, connections: int, unfinished: int
) -> dict[str, Any]:
    """``duration``: the seconds the answers are spread over, for requests per second."""
    return {
        "tool": "loadgen",
        "mode": mode,
        "rate": rate,
        "duration_s": round(duration, 3),
        "connections": connections,
        "ok": tally.ok,
        "status_errors": tally.status_errors,
        "socket_errors": tally.socket_errors,
        "unfinished": unfinished,
        "rps": round(tally.ok / duration, 1),
        "latency_ms": summarize_ms(tally.latencies),
        "service_ms": summarize_ms(tally.service),
    }


def _generator(tally: Tally, dispatched_late_s: float, cpu_share: float) -> dict[str, Any]:
    lag = summarize_ms(tally.lags)
    why_not = keeping_up(lag["p50"], dispatched_late_s, cpu_share)
    return {
        "dispatch_lag_ms": {"p50": lag["p50"], "p99": lag["p99"], "max": lag["max"]},
        "generator_cpu_share": round(cpu_share, 3),
        "keeping_up": why_not is None,
        "why_not": why_not,
    }


# --- command line -------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s; 0 = closed loop")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body", default="", help="request body (JSON)")
    parser.add_argument(
        "--grace", type=float, default=3.0, help="seconds to wait for late answers after the run"
    )
    return parser


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    target = build_target(args.url, args.method, args.body.encode())
    if args.rate > 0:
        return await open_loop(target, args.rate, args.duration, args.connections, args.grace)
    return await closed_loop(target, args.duration, args.connections, args.grace)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result = run_loop(_main(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
