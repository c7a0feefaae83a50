"""Composition root: builds the objects, runs the listeners, shuts down in order.

Shutdown, step by step (SIGTERM or SIGINT):
1. the gRPC health service answers ``NOT_SERVING``; stop accepting new connections on
   the proxy listener and new calls on the gRPC listener;
2. let in-flight production requests and calls finish (up to ``shutdown_timeout_s``);
3. give in-flight shadow copies up to ``drain_timeout_s``, then cancel the rest
   (their pairs are still emitted, as errors);
4. flush the sink (the recorder writes everything buffered);
5. close the upstream pools and the admin listener.

Reload (SIGHUP or ``POST /reload``): the files are read again and new requests are
served with them; requests in flight finish under the config they started with
(``shadowproxy.proxy.runtime`` holds the steps).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.admin.api import admin_app, bind
from shadowproxy.admin.local import FeedbackSink, LocalAdmin, ReloadResult
from shadowproxy.compare import Comparer
from shadowproxy.config import Config, RouteConfig, canary_refusal, load_config
from shadowproxy.errors import ConfigError
from shadowproxy.http.server import HttpServer, ServerLimits
from shadowproxy.metrics import Metrics
from shadowproxy.proxy.handler import ProxyHandler
from shadowproxy.proxy.runtime import Retirer, Snapshot, build, check_reloadable
from shadowproxy.proxy.tee import Tee
from shadowproxy.proxy.upstream import Pools
from shadowproxy.records import Exposure, ExposureSink, Pair, Sink, VerdictCounts, VerdictSource
from shadowproxy.tasks import TaskSet

if TYPE_CHECKING:
    from shadowproxy.proxy.grpc_listener import GrpcListener  # at start, with grpc_listen
    from shadowproxy.recording.forkserver import ForkServer

log = logging.getLogger(__name__)


class RecordingSink(Sink, FeedbackSink, ExposureSink, Protocol):
    """What ``serve`` records to: pairs, feedback and exposures (``recording.Recorder``)."""


@runtime_checkable
class RouteAwareSink(Protocol):
    """A sink that records each route its own way, told of the routes a reload brings."""

    def update_routes(self, routes: Sequence[RouteConfig]) -> None: ...


class DiscardSink:
    """Counts pairs and keeps nothing (tests of the serving path alone)."""

    def __init__(self) -> None:
        self.count = 0

    def submit(self, pair: Pair) -> None:
        self.count += 1

    def submit_exposure(self, exposure: Exposure) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> dict[str, object]:
        return {"status": "ok"}


class Server:
    """The proxy and admin listeners with everything behind them.

    ``load`` reads the config again for a reload (default: the same main file).
    """

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        sink: Sink | None = None,
        feedback: FeedbackSink | None = None,
        auto_choices: Callable[[], dict[str, dict[str, int]]] | None = None,
        load: Callable[[], Config] | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.auto_choices = auto_choices
        self.metrics = metrics or Metrics()
        self.sink = sink or DiscardSink()
        self.feedback = feedback
        self.tee = Tee(self.sink)
        # Embedders' sinks may not compare: then a disagreement guardrail stays undecided.
        self._verdicts: Callable[[], VerdictCounts] | None = (
            self.sink.verdict_counts if isinstance(self.sink, VerdictSource) else None
        )
        self.ready = False
        self._load = load or functools.partial(load_config, config.source)
        self._pools = Pools()
        self._retirer = Retirer(self._pools, self.metrics)
        self._handler: ProxyHandler | None = None
        self._reloading = asyncio.Lock()
        self._reloads = TaskSet()
        self._recorded_routes = {route.name: route for route in config.routes}
        """Every route ever configured, last version: a pair of a route a reload removed
        may still be in flight, and is recorded with that route's settings."""
        self._proxy_server: HttpServer | None = None
        self._grpc: GrpcListener | None = None
        self.grpc_address: tuple[str, int] | None = None
        self._admin_runner: web.AppRunner | None = None
        self.proxy_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    # --- start ------------------------------------------------------------------

    async def start(self) -> None:
        main = self.config.main
        await self.sink.start()
        # Embedders' sinks may predate exposures: then experiment routes record none.
        has_exposures = hasattr(self.sink, "submit_exposure")
        exposures = cast(ExposureSink, self.sink) if has_exposures else None
        self._handler = ProxyHandler(
            build(self.config, self.metrics, self._pools), self.tee, self.metrics, exposures
        )
        for controller in self._handler.snapshot.canaries.values():
            controller.start(self._verdicts)
        self._loaded()
        limits = ServerLimits(
            max_header_bytes=main.max_header_bytes,
            header_timeout_s=main.client_header_timeout_s,
            keepalive_timeout_s=main.client_keepalive_timeout_s,
            body_timeout_s=main.client_body_timeout_s,
        )
        rejected = self.metrics.rejected_requests
        self._proxy_server = HttpServer(
            self._handler, limits, lambda reason: rejected.labels(reason).inc()
        )
        admin = LocalAdmin(
            snapshot=self._snapshot,
            ready=lambda: self.ready,
            recorder_health=self.sink.health,
            registry=self.metrics.registry,
            feedback_sink=self.feedback,
            auto_choices=self.auto_choices,
            do_reload=self.reload,
        )
        # Always installed: a reload may set, change or remove the token.
        app = admin_app(admin, lambda: self.config.main.admin_token)
        self._admin_runner = web.AppRunner(app, access_log=None)
        await self._admin_runner.setup()
        if main.grpc_listen is not None:
            from shadowproxy.proxy.grpc_listener import GrpcListener

            self._grpc = GrpcListener(self.config, self.metrics, self.tee)
            admin.grpc_runners = self._grpc.runners
        host, _, port = main.listen.rpartition(":")
        self.proxy_address = await self._proxy_server.listen(
            host.strip("[]"), int(port), reuse_port=self.reuse_port
        )
        if self._grpc is not None:
            self.grpc_address = await self._grpc.start()
        self.admin_address = await bind(self._admin_runner, main.admin_listen)
        self.ready = True
        log.info(
            "shadowproxy listening on %s:%d (admin %s:%d), %d routes",
            *self.proxy_address,
            *self.admin_address,
            len(self.config.routes),
        )
        if self.grpc_address is not None:
            log.info("gRPC listening on %s:%d", *self.grpc_address)

    # --- reload -----------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Read the config again and serve new requests with it.

        Requests in flight finish under the config they started with. A config that
        does not load, or changes a restart-only setting, is rejected whole: the
        running one keeps serving. Never raises.
        """
        async with self._reloading:
            if not self.ready:
                return ReloadResult(False, error="not serving (starting or stopping)", status=503)
            try:
                # In a thread: parsing and validating must not hold up the event loop.
                config = await asyncio.to_thread(self._load)
                check_reloadable(self.config, config)
                # A worker of ``serve --workers N`` refuses on reload what it refused at start.
                refusal = canary_refusal(config) if self.reuse_port else None
                if refusal is not None:
                    raise ConfigError(config.source, "routes", refusal)
                if self._grpc is not None:
                    self._grpc.check_reloadable(config)
                if not self.ready:
                    return ReloadResult(False, error="stopping", status=503)
                self._swap(config)
            except ConfigError as exc:
                return self._reload_failed(str(exc), 422)
            except Exception as exc:
                log.exception("reload failed")
                return self._reload_failed(f"{type(exc).__name__}: {exc}", 500)
        self.metrics.config_reloads.labels("success").inc()
        self._loaded()
        log.info("reload: %d routes from %s", len(config.routes), config.source)
        return ReloadResult(True, routes=len(config.routes))

    def reload_soon(self) -> None:
        """``reload()`` in the background (the SIGHUP handler)."""
        if not self.ready:
            log.warning("reload: ignored, not serving (starting or stopping)")
            return
        self._reloads.spawn(self.reload(), name="reload")

    def _swap(self, config: Config) -> None:
        """Build, then swap with no await in between: no request sees half of it."""
        assert self._handler is not None
        old = self._handler.snapshot
        new = build(config, self.metrics, self._pools, previous=old)
        self._recorded_routes.update((route.name, route) for route in config.routes)
        if isinstance(self.sink, RouteAwareSink):
            self.sink.update_routes(tuple(self._recorded_routes.values()))
        if self._grpc is not None:
            self._grpc.swap(config)
        self._handler.snapshot = new
        self.config = config
        self._retirer.retire(old, new)
        kept = set(new.canaries.values())
        for controller in kept - set(old.canaries.values()):
            controller.start(self._verdicts)
        for controller in set(old.canaries.values()) - kept:
            self._reloads.spawn(controller.stop(), name=f"canary:{controller.route}:stop")

    def _reload_failed(self, error: str, status: int) -> ReloadResult:
        self.metrics.config_reloads.labels("failure").inc()
        self.metrics.config_last_reload_successful.set(0)
        log.error("reload failed: %s", error)
        return ReloadResult(False, error=error, status=status)

    def _loaded(self) -> None:
        self.metrics.config_last_reload_successful.set(1)
        self.metrics.config_last_reload_success.set(time.time())

    def _snapshot(self) -> Snapshot:
        assert self._handler is not None
        return self._handler.snapshot

    # --- stop -------------------------------------------------------------------

    async def stop(self) -> None:
        self.ready = False
        await self._reloads.drain(0)
        if self._handler is not None:
            for controller in self._handler.snapshot.canaries.values():
                await controller.stop()
        # Steps 1 and 2: stop accepting, wait for in-flight handlers (both listeners).
        grace = self.config.main.shutdown_timeout_s
        closing = []
        if self._proxy_server is not None:
            closing.append(self._proxy_server.close(grace))
        if self._grpc is not None:
            closing.append(self._grpc.close(grace))
        await asyncio.gather(*closing)
        # Step 3: drain shadows.
        cancelled = await self.tee.drain(self.config.main.drain_timeout_s)
        if cancelled:
            log.warning("shutdown: cancelled %d shadow copies after the drain timeout", cancelled)
        # Step 4: flush what was recorded.
        await self.sink.close()
        # Step 5: pools (those a reload left behind too) and admin.
        await self._retirer.close()
        await self._pools.close()
        if self._grpc is not None:
            await self._grpc.close_channels()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()


# The recorder's writer thread runs Python code (redaction, comparison, Arrow
# building). With the default 5 ms switch interval the event loop can wait that long
# for the GIL on every wake-up; 1 ms bounds what recording can add to a request.
GIL_SWITCH_INTERVAL_S = 0.001


SUPERVISOR_CHECK_S = 1.0


async def _stop_without(supervisor_pid: int, stop: asyncio.Event) -> None:
    # Polled: no event announces a parent's death (PR_SET_PDEATHSIG follows the parent's
    # spawning thread, which is not the process).
    while os.getppid() == supervisor_pid:  # noqa: ASYNC110
        await asyncio.sleep(SUPERVISOR_CHECK_S)
    log.warning("supervisor %d is gone: shutting down", supervisor_pid)
    stop.set()


async def serve(
    config: Config,
    sink_factory: Callable[[Config, Metrics], RecordingSink] | None = None,
    on_ready: Callable[[Server], Awaitable[None]] | None = None,
    load: Callable[[], Config] | None = None,
    *,
    reuse_port: bool = False,
    supervisor_pid: int | None = None,
    writer_forks: ForkServer | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down in order; reload on SIGHUP.

    ``supervisor_pid``: a worker of ``serve --workers N`` stops, in order, once that
    process is gone (even killed), so no orphan keeps serving on the shared port.

    By default pairs are compared and recorded to Parquet; ``sink_factory`` replaces
    that (benchmarks, embedding). ``load`` reads the config again for a reload.
    ``writer_forks``: the writer process is forked from it (see ``recording.forkserver``;
    the recorder closes it), else started as a fresh interpreter.
    """
    sink: RecordingSink
    auto_choices: Callable[[], dict[str, dict[str, int]]] | None = None
    if sink_factory is not None:
        metrics = Metrics()
        sink = sink_factory(config, metrics)
    elif config.main.recording.writer == "process":
        from shadowproxy.recording.process import RecorderProcess

        # The writer process exports the recording metrics; ours would be zeros.
        metrics = Metrics(recorder_registry=CollectorRegistry())
        process = RecorderProcess(config, metrics, writer_forks)
        sink, auto_choices = process, process.auto_choices
    else:
        from shadowproxy.recording import Recorder

        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        metrics = Metrics()
        comparer = Comparer(config.routes)
        sink = Recorder(config.main.recording, config.routes, metrics, comparer)
        auto_choices = comparer.auto_choices
    server = Server(config, metrics, sink, sink, auto_choices, load, reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Taken before start: SIGHUP's default action would end the process.
    loop.add_signal_handler(signal.SIGHUP, server.reload_soon)
    try:
        await server.start()
        if on_ready is not None:
            await on_ready(server)
        if supervisor_pid is not None:
            watchdog = TaskSet()
            watchdog.spawn(_stop_without(supervisor_pid, stop), name="supervisor-watchdog")
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
