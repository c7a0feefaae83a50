"""CPU per upstream call: aiohttp's client against ``shadowproxy.http.client``.

The question it answers: how much of the proxy's CPU does one upstream call cost,
with each client used the way the proxy uses it (a small JSON POST with the headers
the proxy forwards, the whole answer read, the connection kept alive).

    this process (uvloop): N requests, C at a time  ──►  nginx, one worker, fixed answer
    time.process_time() before and after             (its CPU is not in ours)

Without nginx on PATH, an aiohttp server in another process stands in. Rounds
alternate between the clients (A B C A B C ...) so a drift of the machine hits all
alike; the figure is the median over rounds, in microseconds of this process's CPU
(user + system) per request. ``floor`` is a bare asyncio Protocol with llhttp and a
prebuilt request: what the event loop and the syscalls cost whatever the client. Client
and upstream share one core unless ``--no-pin`` (see ``pin_to`` for why).

Run: ``.venv/bin/python benchmarks/bench_client.py [--requests 5000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httptools
import uvloop
from procs import Children, free_port, wait_for_port
from upstreams import PREDICT_PATH, REQUEST_BODY, RESPONSE_BODY, answer_server, nginx_conf
from yarl import URL

from shadowproxy.http.client import Pool
from shadowproxy.http.request_head import encode_request

MAX_CONNECTIONS = 64
# What the proxy forwards for a typical client (see shadowproxy.http.headers).
HEADERS = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json"),
    ("User-Agent", "python-requests/2.32.3"),
    ("X-Forwarded-For", "10.1.2.3"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Host", "models.example"),
    ("X-Request-Id", "5f0c6a1e9b3d4c2a8e7f6b5a4c3d2e1f"),
]
BODY = REQUEST_BODY.encode()
EXPECTED = RESPONSE_BODY.encode()

Call = Callable[[], Awaitable[bytes]]


@dataclass
class Round:
    client: str
    concurrency: int
    requests: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s


def aiohttp_call(session: aiohttp.ClientSession, base: str) -> Call:
    """The proxy's production call as it is today (shadowproxy.proxy.handler._open/_buffered)."""

    async def call() -> bytes:
        url = URL(base + PREDICT_PATH, encoded=True)  # the raw path, byte for byte
        response = await session.request(
            "POST", url, headers=HEADERS, data=BODY, allow_redirects=False
        )
        try:
            return await response.read()
        finally:
            response.release()

    return call


def http1_call(pool: Pool) -> Call:
    async def call() -> bytes:
        response = await pool.request("POST", PREDICT_PATH, HEADERS, BODY)
        return await response.read()

    return call


class _Bare(asyncio.Protocol):
    """The floor: llhttp and a future, no pool logic, no checks, the request prebuilt."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.done is not None
        self.done.set_result(b"".join(self.body))
        self.body = []


async def floor_call(port: int, connections: int) -> tuple[Call, list[_Bare]]:
    """What a request costs with nothing but the event loop, the sockets and llhttp."""
    loop = asyncio.get_running_loop()
    free = [(await loop.create_connection(_Bare, "127.0.0.1", port))[1] for _ in range(connections)]
    framing = f"Content-Length: {len(BODY)}"
    request = encode_request("POST", PREDICT_PATH, HEADERS, f"127.0.0.1:{port}", framing) + BODY

    async def call() -> bytes:
        conn = free.pop()
        conn.done = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            return await conn.done
        finally:
            free.append(conn)

    return call, list(free)


async def run_round(client: str, call: Call, concurrency: int, requests: int) -> Round:
    if await call() != EXPECTED:
        raise SystemExit(f"{client}: unexpected answer from the upstream")
    per_worker = requests // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Round(client, concurrency, per_worker * concurrency, cpu, wall)


async def measure(port: int, concurrencies: list[int], requests: int, rounds: int) -> list[Round]:
    base = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=30)
    session = aiohttp.ClientSession(  # as shadowproxy.proxy.upstream._session builds it
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )
    pool = Pool("127.0.0.1", port, max_connections=MAX_CONNECTIONS, keepalive_timeout_s=30)
    floor, bare = await floor_call(port, max(concurrencies))
    clients = {"aiohttp": aiohttp_call(session, base), "http1": http1_call(pool), "floor": floor}
    results: list[Round] = []
    try:
        for concurrency in concurrencies:
            for name, call in clients.items():  # warm-up: connections, caches, JIT-less paths
                await run_round(name, call, concurrency, min(requests, 1000))
            for _ in range(rounds):
                for name, call in clients.items():
                    result = await run_round(name, call, concurrency, requests)
                    results.append(result)
                    print(
                        f"  c={concurrency:<3} {name:<8} {result.cpu_us:7.1f} µs CPU/request"
                        f"  {result.rps:8.0f} req/s",
                        file=sys.stderr,
                    )
    finally:
        await session.close()
        await pool.close()
        for conn in bare:
            if conn.transport is not None:
                conn.transport.close()
    return results


def report(results: list[Round], server: str) -> str:
    """Medians per concurrency: CPU µs per request for each client, then req/s."""
    header = (
        *("concurrency", "aiohttp", "http1", "floor", "aiohttp/http1"),
        *("aiohttp req/s", "http1 req/s", "floor req/s"),
    )
    lines = [
        f"upstream: {server}; CPU of this process per request in µs, median of rounds",
        "{:>11} {:>8} {:>8} {:>8} {:>14} {:>14} {:>12} {:>12}".format(*header),
    ]
    for concurrency in sorted({r.concurrency for r in results}):
        cpu, rps = {}, {}
        for client in ("aiohttp", "http1", "floor"):
            rounds = [r for r in results if r.concurrency == concurrency and r.client == client]
            cpu[client] = statistics.median(r.cpu_us for r in rounds)
            rps[client] = statistics.median(r.rps for r in rounds)
        ratio = cpu["aiohttp"] / cpu["http1"]
        lines.append(
            f"{concurrency:>11} {cpu['aiohttp']:>8.1f} {cpu['http1']:>8.1f} {cpu['floor']:>8.1f}"
            f" {ratio:>13.1f}x {rps['aiohttp']:>14.0f} {rps['http1']:>12.0f}"
            f" {rps['floor']:>12.0f}"
        )
    return "\n".join(lines)


def start_upstream(children: Children, workdir: Path, pin: list[str]) -> tuple[int, str]:
    port = free_port()
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:" + os.environ.get("PATH", ""))
    if nginx is not None:
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_conf(workdir, answer_server(port)))
        argv = [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
        wait_for_port(port, children.start("nginx", [*pin, *argv]))
        return port, "nginx (1 worker)"
    script = Path(__file__).with_name("upstreams.py")
    argv = [sys.executable, str(script), "fast", "--port", str(port)]
    wait_for_port(port, children.start("aiohttp", [*pin, *argv]))
    return port, "aiohttp server (no nginx found)"


def pin_to(cpu: int | None) -> tuple[list[str], str]:
    """Pin this process to ``cpu``; the argv prefix that pins the upstream there too.

    Why one shared core: on a VM a wake-up across cores (an IPI) costs more CPU than the
    client itself and varies from run to run, which drowns the difference measured.
    CPU per request is the figure, not throughput, so sharing the core costs nothing.
    """
    taskset = shutil.which("taskset")
    if cpu is None or taskset is None or not hasattr(os, "sched_setaffinity"):
        return [], "not pinned"
    os.sched_setaffinity(0, {cpu})
    return [taskset, "-c", str(cpu)], f"client and upstream pinned to CPU {cpu}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per client (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin both to (default 0)")
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place them")
    args = parser.parse_args()
    prefix, pinning = pin_to(None if args.no_pin else args.cpu)
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp, Children(Path(tmp)) as kids:
        port, server = start_upstream(kids, Path(tmp), prefix)
        results = uvloop.run(measure(port, args.concurrency, args.requests, args.rounds))
    print(report(results, f"{server}, {pinning}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
