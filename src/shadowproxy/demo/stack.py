"""The demo's moving parts: model server processes, the proxy process, traffic, the report.

Every scenario builds the same kind of stack on loopback ports: one KServe v1 model
server process per model (``demo.model_server``), ``python -m shadowproxy serve`` in
front of them with config files written into the output directory (so a user can read
and reuse them), and ``python -m shadowproxy report`` afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

STARTUP_DEADLINE_S = 30.0
MAX_IN_FLIGHT = 32
"""Requests the traffic generator keeps open at once; beyond it the rate sags instead
of piling up connections on a machine that cannot keep up."""
PREDICT_PATH = "/v1/models/digits:predict"


@dataclass(frozen=True)
class Stack:
    proxy: str
    admin: str
    models: dict[str, str]

    @classmethod
    def on_free_ports(cls, models: Iterable[str]) -> Stack:
        def url() -> str:
            return f"http://127.0.0.1:{free_port()}"

        return cls(proxy=url(), admin=url(), models={name: url() for name in models})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(out: Path) -> Path:
    """The output directory, emptied of a previous run's recording and canary state
    (a canary resumes from its state file: a leftover one would skip the demo)."""
    out = out.resolve()
    for leftover in ("shadow-logs", "state"):
        shutil.rmtree(out / leftover, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_config(out: Path, stack: Stack, route: dict[str, Any], **main: Any) -> Path:
    """The main file and its one route file, as a user would write them."""
    routes = out / "routes"
    routes.mkdir(parents=True, exist_ok=True)
    (routes / f"{route['name']}.yaml").write_text(yaml.safe_dump(route, sort_keys=False))
    document = {
        "listen": stack.proxy.removeprefix("http://"),
        "admin_listen": stack.admin.removeprefix("http://"),
        "routes_dir": "routes",
        "recording": {"dir": str(out / "shadow-logs"), "flush_interval_s": 1},
        **main,
    }
    path = out / "shadowproxy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children started inside are stopped (SIGTERM, then SIGKILL) however we leave."""
    children: list[subprocess.Popen[bytes]] = []
    try:
        yield children
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def spawn(children: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    # One thread per model server: per-request predictions gain nothing from a pool.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", *args], env=env)
    children.append(child)
    return child


def start_model(
    children: list[subprocess.Popen[bytes]], url: str, model: Path, name: str, *extra: str
) -> None:
    port = url.rsplit(":", 1)[1]
    spawn(children, "shadowproxy.demo.model_server", "--model", str(model),
          "--name", f"digits-{name}", "--port", port, *extra)  # fmt: skip


def start_proxy(children: list[subprocess.Popen[bytes]], config: Path) -> subprocess.Popen[bytes]:
    return spawn(children, "shadowproxy", "--log-level", "warning", "serve",
                 "--config", str(config))  # fmt: skip


def stop_proxy(proxy: subprocess.Popen[bytes]) -> bool:
    """SIGTERM, as an orchestrator would: the proxy drains and closes its files."""
    proxy.send_signal(signal.SIGTERM)
    if proxy.wait(timeout=60) != 0:
        print(f"shadowproxy exited with {proxy.returncode}", file=sys.stderr)
        return False
    return True


async def wait_until_up(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up within {STARTUP_DEADLINE_S:g}s")
        await asyncio.sleep(0.1)


async def wait_for_stack(session: aiohttp.ClientSession, stack: Stack) -> None:
    for url in (*(f"{m}/v1/models/digits" for m in stack.models.values()), f"{stack.admin}/readyz"):
        await wait_until_up(session, url)


async def steady(
    rate: float,
    send: Callable[[int], Awaitable[None]],
    *,
    count: int | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Call ``send(0)``, ``send(1)``, ... at ``rate`` per second (open loop, at most
    ``MAX_IN_FLIGHT`` at once) until ``count`` calls or ``stop``; returns the calls made."""
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    started = time.monotonic()

    async def one(index: int) -> None:
        try:
            await send(index)
        finally:
            slots.release()

    index = 0
    async with asyncio.TaskGroup() as group:
        while (count is None or index < count) and not (stop is not None and stop.is_set()):
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            await slots.acquire()
            group.create_task(one(index))
            index += 1
    return index


def run_report(out: Path, *extra: str) -> int:
    """``shadowproxy report`` on the recording, as a user would run it (``extra``: more
    arguments, e.g. ``--config`` and ``--gate``)."""
    command = [sys.executable, "-m", "shadowproxy", "report", str(out / "shadow-logs"),
               "--out", str(out / "report.html"), "--json", str(out / "summary.json"),
               *extra]  # fmt: skip
    print("$ shadowproxy report " + " ".join(command[4:]), flush=True)
    return subprocess.run(command, env={**os.environ, "COLUMNS": "160"}).returncode
