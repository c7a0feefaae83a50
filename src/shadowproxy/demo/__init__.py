"""``shadowproxy demo``: the whole idea, end to end, in under a minute.

Trains production v1 and candidate v2 on a data set inside scikit-learn, serves each
(plus a second replica of v1 as the ``baseline`` noise floor) from its own KServe v1
model server process, puts shadowproxy in front, replays held-out rows as traffic at
a steady rate, posts the true labels to ``/feedback`` a moment later ("wait and see"),
stops, and writes the report. Nothing is downloaded; no external service is needed.
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import yaml

from shadowproxy.demo.models import DemoData, train

STARTUP_DEADLINE_S = 30.0
FEEDBACK_DELAY_S = 1.0
FEEDBACK_BATCH = 500


@dataclass(frozen=True)
class Stack:
    proxy: str
    admin: str
    models: dict[str, str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(out: Path, stack: Stack) -> Path:
    """The demo's main file and its one route file, as a user would write them."""
    routes = out / "routes"
    routes.mkdir(parents=True, exist_ok=True)
    route = {
        "name": "digits",
        "match": {"path_prefix": "/v1/models/digits", "methods": ["POST"]},
        "production": {"url": stack.models["v1"], "timeout_s": 10},
        "shadows": [
            {"name": "candidate-v2", "url": stack.models["v2"], "role": "candidate"},
            {"name": "baseline-v1", "url": stack.models["v1-replica"], "role": "baseline"},
        ],
        "compare": {"prediction": "kserve-v1", "kind": "label"},
    }
    (routes / "digits.yaml").write_text(yaml.safe_dump(route, sort_keys=False))
    main = {
        "listen": stack.proxy.removeprefix("http://"),
        "admin_listen": stack.admin.removeprefix("http://"),
        "routes_dir": "routes",
        "recording": {"dir": str(out / "shadow-logs"), "flush_interval_s": 1},
    }
    path = out / "shadowproxy.yaml"
    path.write_text(yaml.safe_dump(main, sort_keys=False))
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


async def replay(
    session: aiohttp.ClientSession, url: str, data: DemoData, rate: float
) -> list[str]:
    """Send each held-out row once, on a fixed schedule (open loop), with a progress bar."""
    from rich.progress import Progress

    run = uuid.uuid4().hex[:8]
    ids = [f"demo-{run}-{index:05d}" for index in range(len(data.rows))]
    started = time.monotonic()
    failures = 0

    with Progress(transient=False) as progress:
        task = progress.add_task(f"replaying {len(ids)} requests at {rate:g}/s", total=len(ids))

        async def send(index: int) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            body = orjson.dumps({"instances": [data.rows[index]]})
            headers = {"Content-Type": "application/json", "X-Request-Id": ids[index]}
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                failures += response.status != 200
            progress.advance(task)

        await asyncio.gather(*(send(index) for index in range(len(ids))))
    if failures:
        print(f"warning: {failures} requests did not get a 200 from production")
    return ids


async def post_feedback(
    session: aiohttp.ClientSession, admin: str, ids: list[str], labels: list[int]
) -> None:
    await asyncio.sleep(FEEDBACK_DELAY_S)
    for start in range(0, len(ids), FEEDBACK_BATCH):
        batch = [
            {"request_id": request_id, "label": label}
            for request_id, label in zip(
                ids[start : start + FEEDBACK_BATCH],
                labels[start : start + FEEDBACK_BATCH],
                strict=True,
            )
        ]
        async with session.post(f"{admin}/feedback", json=batch) as response:
            if response.status != 202:
                raise RuntimeError(f"/feedback answered {response.status}: {await response.text()}")
    print(f"posted {len(ids)} ground-truth labels to {admin}/feedback")


async def drive(stack: Stack, data: DemoData, rate: float, keep_running: bool) -> None:
    async with aiohttp.ClientSession() as session:
        for url in (
            *(f"{m}/v1/models/digits" for m in stack.models.values()),
            f"{stack.admin}/readyz",
        ):
            await wait_until_up(session, url)
        ids = await replay(session, f"{stack.proxy}/v1/models/digits:predict", data, rate)
        await post_feedback(session, stack.admin, ids, data.labels)
        if keep_running:
            print_urls(stack, data.rows[0])
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()


def print_urls(stack: Stack, example: list[float]) -> None:
    body = orjson.dumps({"instances": [example]}).decode()
    print(
        "\nThe stack is up. Try:\n"
        f"  curl -s -X POST {stack.proxy}/v1/models/digits:predict -d '{body}'\n"
        f"  curl -s {stack.admin}/metrics | grep shadowproxy_comparisons\n"
        f"  curl -s {stack.admin}/routes\n"
        f"models: {', '.join(f'{k} {v}' for k, v in stack.models.items())}\n"
        "Ctrl-C stops everything and writes the report.\n",
        flush=True,
    )


def run_demo(out: Path, rate: float = 100.0, keep_running: bool = False) -> int:
    out = out.resolve()
    shutil.rmtree(out / "shadow-logs", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    print("training production v1 (logistic regression) and candidate v2 (gradient boosting)...")
    paths, data = train(out)
    stack = Stack(
        proxy=f"http://127.0.0.1:{free_port()}",
        admin=f"http://127.0.0.1:{free_port()}",
        models={name: f"http://127.0.0.1:{free_port()}" for name in ("v1", "v2", "v1-replica")},
    )
    config = write_config(out, stack)
    with processes() as children:
        for name, url in stack.models.items():
            model = paths["v1" if name == "v1-replica" else name]
            port = url.rsplit(":", 1)[1]
            spawn(children, "shadowproxy.demo.model_server", "--model", str(model),
                  "--name", f"digits-{name}", "--port", port)  # fmt: skip
        proxy = spawn(children, "shadowproxy", "--log-level", "warning", "serve",
                      "--config", str(config))  # fmt: skip
        try:
            _run(drive(stack, data, rate, keep_running))
        except KeyboardInterrupt:
            print("\nstopping...")
        proxy.send_signal(signal.SIGTERM)
        if proxy.wait(timeout=60) != 0:
            print(f"shadowproxy exited with {proxy.returncode}", file=sys.stderr)
            return 1
    report = out / "report.html"
    summary = out / "summary.json"
    command = [sys.executable, "-m", "shadowproxy", "report", str(out / "shadow-logs"),
               "--out", str(report), "--json", str(summary)]  # fmt: skip
    code = subprocess.run(command, env={**os.environ, "COLUMNS": "160"}).returncode
    print(f"\nreport: {report}\nsummary: {summary}\ndemo took {time.monotonic() - began:.0f}s")
    return code


def _run(coro: object) -> None:
    from shadowproxy.cli import run

    run(coro)  # type: ignore[arg-type]
