"""Real loopback servers and a real in-process proxy for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.config import Config, load_config
from shadowproxy.metrics import Metrics
from shadowproxy.records import Exposure, Pair


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Upstream:
    """A model server on loopback that remembers what it received."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_upstream(handler: Handler | None = None) -> Upstream:
    upstream = Upstream(url="")

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        upstream.seen.append(
            Seen(request.method, request.path_qs, list(request.headers.items()), body)
        )
        if handler is not None:
            return await handler(request)
        return web.json_response({"predictions": [1.0], "echo": body.decode(errors="replace")})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream.url = f"http://127.0.0.1:{port}"
    upstream.runner = runner
    return upstream


@contextlib.asynccontextmanager
async def upstream(handler: Handler | None = None) -> AsyncIterator[Upstream]:
    server = await start_upstream(handler)
    try:
        yield server
    finally:
        assert server.runner is not None
        await server.runner.cleanup()


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """Accepts connections and never answers: the worst kind of shadow."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in writers:
            writer.close()
        server.close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


def write_config(directory: Path, routes: list[dict[str, Any]], **main: Any) -> Path:
    """Main file plus one file per route under ``routes/``, as users lay them out."""
    routes_dir = directory / "routes"
    routes_dir.mkdir(parents=True, exist_ok=True)
    for route in routes:
        (routes_dir / f"{route['name']}.yaml").write_text(yaml.safe_dump(route))
    body = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "routes_dir": "routes",
        "drain_timeout_s": 5,
        "recording": {"dir": str(directory / "shadow-logs")},
        "state_dir": str(directory / "state"),
        **main,
    }
    path = directory / "shadowproxy.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def route(
    name: str,
    production: str,
    shadows: list[dict[str, Any]] | None = None,
    prefix: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": prefix or f"/v1/models/{name}"},
        "production": {"url": production, "timeout_s": extra.pop("timeout_s", 5)},
        "shadows": shadows or [],
        **extra,
    }


class CollectingSink:
    """Keeps every pair and exposure, so tests can assert on exactly what the proxy produced."""

    def __init__(self) -> None:
        self.pairs: list[Pair] = []
        self.exposures: list[Exposure] = []
        self._changed = asyncio.Event()

    def submit(self, pair: Pair) -> None:
        self.pairs.append(pair)
        self._changed.set()

    def submit_exposure(self, exposure: Exposure) -> None:
        self.exposures.append(exposure)
        self._changed.set()

    async def wait_for(self, count: int, within_s: float = 10.0) -> list[Pair]:
        async with asyncio.timeout(within_s):
            while len(self.pairs) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.pairs

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> dict[str, object]:
        return {"status": "ok"}


@dataclass
class RunningProxy:
    server: Server
    sink: CollectingSink
    registry: CollectorRegistry

    @property
    def url(self) -> str:
        assert self.server.proxy_address is not None
        host, port = self.server.proxy_address
        return f"http://{host}:{port}"

    @property
    def admin_url(self) -> str:
        assert self.server.admin_address is not None
        host, port = self.server.admin_address
        return f"http://{host}:{port}"

    def metric(self, name: str, **labels: str) -> float:
        if name == "shadowproxy_requests_total":
            labels.setdefault("grpc_status", "")  # HTTP requests: the label is empty
        return self.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def running_proxy(config: Config | Path) -> AsyncIterator[RunningProxy]:
    if isinstance(config, Path):
        config = load_config(config)
    registry = CollectorRegistry()
    sink = CollectingSink()
    server = Server(config, Metrics(registry), sink)
    await server.start()
    try:
        yield RunningProxy(server, sink, registry)
    finally:
        await server.stop()


# --- the real CLI as a subprocess ----------------------------------------------------


def free_port() -> int:

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int) -> None:
    for _ in range(400):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


async def run_cli_proxy(config: Path, port: int, traffic: Any) -> str:
    """Start ``shadowproxy serve``, run ``traffic``, SIGTERM right after, return its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowproxy", "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_listening(port)
        await traffic()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = (await process.stdout.read()).decode()  # type: ignore[union-attr]
    assert code == 0, output
    return output
