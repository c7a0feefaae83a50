"""``serve --workers N``: N proxy processes on one port, one admin listener in front.

One Python process serves one core. Each worker is a complete ``shadowproxy serve``
(its own upstream pools, shadows and writer process, so recorded files never collide:
their names carry the pid) that binds the traffic port with ``SO_REUSEPORT``, so the
kernel spreads connections across workers, and binds its admin listener on a private
loopback port. This process owns the configured admin port: it merges the workers'
metrics into one exposition, answers readiness for all of them, passes ``/feedback``,
``/routes`` and ``/reload`` through, restarts a worker that dies and stops them all in
order on SIGTERM.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.exposition import generate_latest

from shadowproxy.admin.api import admin_app, bind, json_response
from shadowproxy.admin.metrics_merge import WorkerExpositions
from shadowproxy.config import Config, load_config
from shadowproxy.errors import ConfigError
from shadowproxy.metrics import WorkerMetrics
from shadowproxy.tasks import TaskSet

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0
_ADMIN_CALL_TIMEOUT_S = 10.0
_MAX_RESTART_BACKOFF_S = 30.0
_HEALTHY_AFTER_S = 30.0
"""A worker that ran this long before dying restarts at once (not a crash loop)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WorkerStartError(RuntimeError):
    pass


@dataclass
class Worker:
    index: int
    admin_port: int = 0
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0
    ready: bool = False
    exits: list[int] = field(default_factory=list)

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def resolve_listen(listen: str) -> str:
    """``host:0`` becomes a real free port: every worker must bind the same one."""
    host, _, port = listen.rpartition(":")
    if int(port) != 0:
        return listen
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((bare, 0))
        return f"{host}:{probe.getsockname()[1]}"


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Supervisor:
    def __init__(
        self, config: Config, config_path: str, workers: int, log_level: str = "info"
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.listen = resolve_listen(config.main.listen)
        self.log_level = log_level
        self.workers = [Worker(index) for index in range(workers)]
        self.stopping = False
        self.registry = CollectorRegistry()
        worker_metrics = WorkerMetrics(self.registry)
        self.alive = worker_metrics.workers
        self.restarts = worker_metrics.restarts
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._feedback_turn = itertools.cycle(range(workers))
        self._expositions = WorkerExpositions()
        self._tasks = TaskSet()
        self.admin_address: tuple[str, int] | None = None

    # --- lifecycle --------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_ADMIN_CALL_TIMEOUT_S)
        )
        try:
            try:
                await asyncio.gather(*(self._start(worker) for worker in self.workers))
            except WorkerStartError as exc:
                log.error("%s", exc)
                return 1
            await self._start_admin()
            self._watchers = [
                loop.create_task(self._watch(worker), name=f"watch-worker-{worker.index}")
                for worker in self.workers
            ]
            log.info(
                "shadowproxy: %d workers on %s (admin %s:%d), pids %s",
                len(self.workers),
                self.listen,
                *(self.admin_address or ("?", 0)),
                ",".join(str(worker.pid) for worker in self.workers),
            )
            await stop.wait()
            log.info("shutting down %d workers", len(self.workers))
            return await self._stop_workers()
        finally:
            self.stopping = True
            for watcher in self._watchers:
                watcher.cancel()
            await asyncio.gather(*self._watchers, return_exceptions=True)
            await self._tasks.drain(0)
            await self._kill_all()
            if self._runner is not None:
                await self._runner.cleanup()
            await self._session.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _argv(self, worker: Worker) -> list[str]:
        return [
            sys.executable,
            "-m",
            "shadowproxy",
            "--log-level",
            self.log_level,
            "serve",
            "--config",
            self.config_path,
            "--listen",
            self.listen,
            "--admin-listen",
            f"127.0.0.1:{worker.admin_port}",
            "--reuse-port",
            "--supervisor-pid",
            str(os.getpid()),
        ]

    async def _start(self, worker: Worker) -> None:
        worker.admin_port = _free_loopback_port()
        worker.ready = False
        worker.process = await asyncio.create_subprocess_exec(
            *self._argv(worker), stdin=asyncio.subprocess.DEVNULL
        )
        worker.started = time.monotonic()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = worker.process.returncode
            if code is not None:
                raise WorkerStartError(f"worker {worker.index} exited with {code} while starting")
            if await self._ready(worker):
                worker.ready = True
                return
            await asyncio.sleep(0.1)
        worker.process.kill()
        raise WorkerStartError(f"worker {worker.index} not ready within {_START_TIMEOUT_S:g}s")

    async def _ready(self, worker: Worker) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"{worker.admin}/readyz") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _watch(self, worker: Worker) -> None:
        """Restart the worker when it exits on its own (backing off if it keeps dying)."""
        while not self.stopping:
            process = worker.process
            assert process is not None
            code = await process.wait()
            if self.stopping:
                return
            worker.ready = False
            worker.exits.append(code)
            lived = time.monotonic() - worker.started
            worker.failures = 0 if lived >= _HEALTHY_AFTER_S else worker.failures + 1
            delay = min(_MAX_RESTART_BACKOFF_S, 0.5 * (2**worker.failures) - 0.5)
            log.error(
                "worker %d (pid %d) exited with %d after %.1fs; restarting in %.1fs",
                worker.index,
                process.pid,
                code,
                lived,
                delay,
            )
            await asyncio.sleep(delay)
            if self.stopping:
                return
            self.restarts.inc()
            try:
                await self._start(worker)
            except WorkerStartError as exc:
                if self.stopping:
                    return  # a restart cut short by shutdown: nothing went wrong
                log.error("%s", exc)
                if worker.running:
                    assert worker.process is not None
                    worker.process.kill()

    async def _stop_workers(self) -> int:
        """SIGTERM each worker; each finishes its requests, drains and flushes."""
        self.stopping = True
        main = self.config.main
        grace = main.shutdown_timeout_s + main.drain_timeout_s + main.recording.close_timeout_s + 5
        running = [w.process for w in self.workers if w.process and w.running]
        for process in running:
            process.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(_wait(process, grace) for process in running))
        # -SIGTERM: a worker still starting (a restart) had no handler yet; it had no
        # requests either, so ending it there is a clean stop too.
        failed = [code for code in codes if code not in (0, -signal.SIGTERM)]
        if failed:
            log.error("workers exited with %s", failed)
        return 0 if not failed else 1

    async def _kill_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.running:
                worker.process.kill()
                await worker.process.wait()

    def _on_sighup(self) -> None:
        self._tasks.spawn(self.reload_all(None), name="reload")

    # --- admin ------------------------------------------------------------------

    async def _start_admin(self) -> None:
        app = admin_app(SupervisorAdmin(self), lambda: self.config.main.admin_token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.admin_address = await bind(self._runner, self.config.main.admin_listen)

    async def readiness(self) -> tuple[dict[str, Any], bool]:
        states = await asyncio.gather(*(self._ready(worker) for worker in self.workers))
        # One worker restarting does not take the instance out of service: the others
        # still accept on the shared port.
        ready = any(states) and not self.stopping
        body = {
            "status": "ok" if ready else "starting",
            "workers": [
                {"index": worker.index, "pid": worker.pid, "ready": state}
                for worker, state in zip(self.workers, states, strict=True)
            ],
        }
        return body, ready

    async def merged_metrics(self) -> bytes:
        texts = await asyncio.gather(*(self._scrape(worker) for worker in self.workers))
        for worker, text in zip(self.workers, texts, strict=True):
            self._expositions.update(worker.index, worker.pid, text)
        self.alive.set(sum(1 for worker in self.workers if worker.running))
        return self._expositions.merged(generate_latest(self.registry).decode()).encode()

    async def _scrape(self, worker: Worker) -> str | None:
        """None when the worker does not answer (restarting, busy): see WorkerExpositions."""
        assert self._session is not None
        try:
            async with self._session.get(f"{worker.admin}/metrics") as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def pass_to_ready(self, request: web.Request) -> web.StreamResponse:
        """Every worker serves the same config: ask the first one that is ready."""
        for worker in self.workers:
            if worker.ready:
                return await self.pass_to(worker, request)
        return json_response({"error": "no worker is ready"}, status=503)

    async def pass_feedback(self, request: web.Request) -> web.StreamResponse:
        """Any worker records feedback: the report joins it with every worker's pairs."""
        for _ in self.workers:
            worker = self.workers[next(self._feedback_turn)]
            if worker.ready:
                return await self.pass_to(worker, request)
        return json_response({"error": "no worker is ready"}, status=503)

    async def reload_all(self, authorization: str | None) -> list[dict[str, Any]]:
        """Every worker re-reads the files itself (each validates; a bad file fails all)."""
        assert self._session is not None
        headers = {"Authorization": authorization} if authorization else {}
        if not headers and self.config.main.admin_token is not None:
            headers = {"Authorization": f"Bearer {self.config.main.admin_token}"}

        async def one(worker: Worker) -> dict[str, Any]:
            try:
                async with self._session.post(  # type: ignore[union-attr]
                    f"{worker.admin}/reload", headers=headers
                ) as response:
                    body: dict[str, Any] = orjson.loads(await response.read())
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
                body = {"result": "failure", "error": f"worker unreachable: {exc}"}
            body["worker"] = worker.index
            return body

        results = list(await asyncio.gather(*(one(worker) for worker in self.workers)))
        for result in results:
            if result.get("result") != "success":
                log.error("reload failed in worker %d: %s", result["worker"], result.get("error"))
        if all(result.get("result") == "success" for result in results):
            self._reread_config()
        return results

    def _reread_config(self) -> None:
        """Follow the workers to the new files, so a changed admin token applies here
        too (the workers validated them; the listeners stay as they are)."""
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:  # changed again since the workers read it
            log.error("supervisor kept its config: %s", exc)

    async def pass_to(self, worker: Worker, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "content-type", "x-request-id", "x-operator")
        }
        try:
            async with self._session.request(
                request.method, f"{worker.admin}{request.path_qs}", headers=headers,
                data=await request.read() if request.can_read_body else None,
            ) as response:  # fmt: skip
                body = await response.read()
                return web.Response(
                    body=body,
                    status=response.status,
                    content_type=response.content_type,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return json_response({"error": f"worker {worker.index} unreachable: {exc}"}, status=503)


async def _wait(process: asyncio.subprocess.Process, timeout_s: float) -> int:
    try:
        return await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        log.error("worker pid %d did not stop within %.0fs; killing it", process.pid, timeout_s)
        process.kill()
        return await process.wait()


class SupervisorAdmin:
    """``AdminEndpoints`` for ``serve --workers N``: merged metrics, readiness of all
    workers, the rest passed through to a worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok", "workers": len(self._supervisor.workers)})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        body, ready = await self._supervisor.readiness()
        return json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = await self._supervisor.merged_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def routes(self, request: web.Request) -> web.StreamResponse:
        return await self._supervisor.pass_to_ready(request)

    async def feedback(self, request: web.Request) -> web.StreamResponse:
        return await self._supervisor.pass_feedback(request)

    async def reload(self, request: web.Request) -> web.StreamResponse:
        results = await self._supervisor.reload_all(request.headers.get("Authorization"))
        ok = all(result.get("result") == "success" for result in results)
        return json_response(
            {"result": "success" if ok else "failure", "workers": results},
            status=200 if ok else 422,
        )

    async def experiments(self, request: web.Request) -> web.StreamResponse:
        """Every worker holds the same experiments (canaries are refused with workers)."""
        return await self._supervisor.pass_to_ready(request)

    async def experiment_action(self, request: web.Request) -> web.StreamResponse:
        return await self._supervisor.pass_to_ready(request)
