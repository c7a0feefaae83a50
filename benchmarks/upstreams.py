"""The upstreams the benchmarked systems talk to, all on loopback.

* **production** and the **healthy shadow**: NGINX answering ``200`` with a fixed
  KServe-style body (``{"predictions": [...]}``), one worker, so the upstream is never
  the bottleneck and costs almost no CPU. Without nginx, a small aiohttp server stands
  in (and the README's caveat applies: it may then be the bottleneck).
* **slow shadow**: the same answer after 200 ms (aiohttp; nginx cannot delay cheaply).
* **black-holed shadow**: accepts TCP connections, reads, never answers.
* **down shadow**: a port bound by the harness that never listens, so connecting is
  refused at once and nothing else can take the port during the run.

The Python servers run in their own processes, started through this file::

    python benchmarks/upstreams.py slow --port 8123 --delay-ms 200
    python benchmarks/upstreams.py blackhole --port 8124
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from procs import Children, free_port, refused_port, wait_for_port

from shadowproxy.loop import run_loop

SCENARIOS = ("healthy", "slow", "down", "blackhole")
"""Which shadow the systems under test tee to; ``healthy`` is the reference."""

SLOW_DELAY_MS = 200

RESPONSE_BODY = json.dumps(
    {"predictions": [[0.8231, 0.1769], [0.1042, 0.8958]], "model_name": "bench"},
    separators=(",", ":"),
)
REQUEST_BODY = json.dumps(
    {
        "instances": [
            [5.1, 3.5, 1.4, 0.2, 6.3, 2.9, 5.6, 1.8, 4.7, 3.2, 1.3, 0.2],
            [6.9, 3.1, 4.9, 1.5, 5.8, 2.7, 5.1, 1.9, 7.2, 3.6, 6.1, 2.5],
        ],
        "parameters": {"request_kind": "benchmark", "return_probabilities": True},
    },
    separators=(",", ":"),
)
"""About 200 bytes of JSON, like a small tabular prediction request."""

PREDICT_PATH = "/v1/models/bench:predict"


@dataclass(frozen=True)
class Upstreams:
    production: str
    shadows: dict[str, str]
    """Scenario name -> base URL of the shadow for that scenario."""
    server: str
    """What serves production and the healthy shadow: ``nginx`` or ``aiohttp``."""


# --- nginx -----------------------------------------------------------------------------


def nginx_conf(workdir: Path, http_block: str, error_level: str = "error") -> str:
    """A self-contained nginx.conf: one worker, every path under ``workdir``."""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log {error_level};
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temp}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{http_block}
}}
"""


def answer_server(port: int) -> str:
    return f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{RESPONSE_BODY}';
        }}
    }}"""


def start_nginx(children: Children, nginx: str, name: str, conf: str, port: int) -> int:
    """Start nginx in its own directory; return the master's pid once ``port`` is open."""
    workdir = children.workdir / name
    workdir.mkdir(exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(conf)
    argv = [nginx, "-p", str(workdir), "-c", str(path), "-e", str(workdir / "error.log")]
    child = children.start(name, argv)
    wait_for_port(port, child)
    return child.pid


# --- starting them ---------------------------------------------------------------------


def start_upstreams(
    children: Children, stack: contextlib.ExitStack, nginx: str | None
) -> Upstreams:
    """Production, the healthy, slow and black-holed shadows, and a refused port."""
    production, healthy = free_port(), free_port()
    if nginx is not None:
        block = f"{answer_server(production)}\n{answer_server(healthy)}"
        start_nginx(
            children,
            nginx,
            "upstream-nginx",
            nginx_conf(children.workdir / "upstream-nginx", block),
            healthy,
        )
        server = "nginx"
    else:
        _start_python(children, "upstream-production", "fast", production)
        _start_python(children, "upstream-healthy", "fast", healthy)
        server = "aiohttp"
    slow, blackhole = free_port(), free_port()
    _start_python(children, "upstream-slow", "slow", slow)
    _start_python(children, "upstream-blackhole", "blackhole", blackhole)
    down_socket, down = refused_port()
    stack.callback(down_socket.close)
    ports = {"healthy": healthy, "slow": slow, "down": down, "blackhole": blackhole}
    return Upstreams(
        production=f"http://127.0.0.1:{production}",
        shadows={name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
        server=server,
    )


def _start_python(children: Children, name: str, kind: str, port: int) -> None:
    argv = [sys.executable, str(Path(__file__).resolve()), kind, "--port", str(port)]
    child = children.start(name, argv)
    wait_for_port(port, child)


# --- the Python servers (each in its own process) --------------------------------------


async def serve_answer(port: int, delay_s: float) -> None:
    """Answer every request with ``RESPONSE_BODY``, after ``delay_s``."""
    from aiohttp import web

    body = RESPONSE_BODY.encode()

    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(body=body, content_type="application/json")

    runner = web.ServerRunner(web.Server(handle, access_log=None), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


class _Swallow(asyncio.Protocol):
    """Reads whatever arrives and never answers."""

    def data_received(self, data: bytes) -> None:
        return None


async def serve_blackhole(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Swallow, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Python upstream for the benchmarks.")
    parser.add_argument("kind", choices=["fast", "slow", "blackhole"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=SLOW_DELAY_MS)
    args = parser.parse_args(argv)
    if args.kind == "blackhole":
        coro = serve_blackhole(args.port)
    else:
        coro = serve_answer(args.port, args.delay_ms / 1000.0 if args.kind == "slow" else 0.0)
    run_loop(coro)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
