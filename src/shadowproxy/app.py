"""Composition root: builds the objects, runs the listeners, shuts down in order.

Shutdown, step by step (SIGTERM or SIGINT):
1. stop accepting new connections on the proxy listener;
2. let in-flight production requests finish (up to ``shutdown_timeout_s``);
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
import hmac
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shadowproxy.admin.feedback import FeedbackError, FeedbackItem, parse_feedback
from shadowproxy.compare import Comparer, describe
from shadowproxy.config import Config, RouteConfig, load_config
from shadowproxy.errors import ConfigError
from shadowproxy.experiments.canary import OPERATOR_ACTIONS, CanaryActionError
from shadowproxy.http.server import HttpServer, ServerLimits
from shadowproxy.metrics import Metrics
from shadowproxy.proxy.handler import ProxyHandler
from shadowproxy.proxy.runtime import Retirer, build, check_reloadable
from shadowproxy.proxy.tee import ShadowRunner, Tee
from shadowproxy.proxy.upstream import Pools
from shadowproxy.records import Exposure, ExposureSink, Pair, Sink, VerdictCounts, VerdictSource
from shadowproxy.tasks import TaskSet

log = logging.getLogger(__name__)

# Large enough for any sane header block, small enough to refuse abuse (431/400).


# Probes and scrapers need no credentials; everything else does once a token is set.
OPEN_ADMIN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Feedback bodies are small JSON; a cap keeps a bad client from filling memory.
MAX_FEEDBACK_BYTES = 8 * 1024 * 1024


class FeedbackSink(Protocol):
    def submit_feedback(self, items: Sequence[FeedbackItem]) -> bool:
        """Accept all items or none; False when the buffer is full."""


class RecordingSink(Sink, FeedbackSink, ExposureSink, Protocol):
    """What ``serve`` records to: pairs, feedback and exposures (``recording.Recorder``)."""


@runtime_checkable
class RouteAwareSink(Protocol):
    """A sink that records each route its own way, told of the routes a reload brings."""

    def update_routes(self, routes: Sequence[RouteConfig]) -> None: ...


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """How a reload went; ``error`` reads ``file: field: message`` for a bad config."""

    ok: bool
    routes: int = 0
    error: str | None = None
    status: int = 200
    """What ``POST /reload`` answers: 422 for a rejected config, 503 when not serving."""


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


def redact_url(url: str) -> str:
    """Hide credentials in an upstream URL before it is shown anywhere."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def routes_document(
    config: Config,
    runners: dict[str, list[ShadowRunner]],
    auto_choices: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """What ``/routes`` shows: the active routes, how each compares, each shadow's state."""
    auto_choices = auto_choices or {}

    def shadow_entry(runner: ShadowRunner) -> dict[str, Any]:
        shadow = runner.config
        return {
            "name": shadow.name,
            "url": redact_url(shadow.url),
            "role": shadow.role,
            "sample_rate": shadow.sample_rate,
            "sample_key": shadow.sample_key,
            "timeout_s": shadow.timeout_s,
            "max_in_flight": shadow.max_in_flight,
            "in_flight": runner.in_flight,
            "circuit": runner.breaker.state,
        }

    def route_entry(route: RouteConfig, source: str) -> dict[str, Any]:
        return {
            "name": route.name,
            "source": source,
            "match": {"path_prefix": route.match.path_prefix, "methods": route.match.methods},
            "production": {
                "url": redact_url(route.production.url),
                "timeout_s": route.production.timeout_s,
            },
            "max_body_bytes": route.max_body_bytes,
            "record": route.record.model_dump(mode="json"),
            "compare": {
                **describe(route.compare),
                "auto_picked": auto_choices.get(route.name, {}),
            },
            "shadows": [shadow_entry(runner) for runner in runners[route.name]],
            "chaos": [rule.model_dump(mode="json", exclude_defaults=True) for rule in route.chaos],
        }

    main = config.main
    return {
        "config": config.source,
        "default_upstream": redact_url(main.default_upstream) if main.default_upstream else None,
        "routes": [
            route_entry(route, source)
            for route, source in zip(config.routes, config.route_sources, strict=True)
        ],
    }


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
        self._admin_runner = web.AppRunner(self._admin_app(), access_log=None)
        await self._admin_runner.setup()
        host, _, port = main.listen.rpartition(":")
        self.proxy_address = await self._proxy_server.listen(
            host.strip("[]"), int(port), reuse_port=self.reuse_port
        )
        self.admin_address = await _bind(self._admin_runner, main.admin_listen)
        self.ready = True
        log.info(
            "shadowproxy listening on %s:%d (admin %s:%d), %d routes",
            *self.proxy_address,
            *self.admin_address,
            len(self.config.routes),
        )

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

    # --- stop -------------------------------------------------------------------

    async def stop(self) -> None:
        self.ready = False
        await self._reloads.drain(0)
        if self._handler is not None:
            for controller in self._handler.snapshot.canaries.values():
                await controller.stop()
        if self._proxy_server is not None:
            # Steps 1 and 2: stop accepting, wait for in-flight handlers.
            await self._proxy_server.close(self.config.main.shutdown_timeout_s)
        # Step 3: drain shadows.
        cancelled = await self.tee.drain(self.config.main.drain_timeout_s)
        if cancelled:
            log.warning("shutdown: cancelled %d shadow copies after the drain timeout", cancelled)
        # Step 4: flush what was recorded.
        await self.sink.close()
        # Step 5: pools (those a reload left behind too) and admin.
        await self._retirer.close()
        await self._pools.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()

    # --- admin ------------------------------------------------------------------

    def _admin_app(self) -> web.Application:
        # Always installed: a reload may set, change or remove the token.
        app = web.Application(client_max_size=MAX_FEEDBACK_BYTES, middlewares=[self._require_token])
        app.router.add_post("/feedback", self._feedback)
        app.router.add_post("/reload", self._reload)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/routes", self._routes)
        app.router.add_get("/experiments", self._experiments)
        app.router.add_post("/experiments/{route}/{action}", self._experiment_action)
        return app

    async def _experiments(self, request: web.Request) -> web.Response:
        """Canary state and decisions; A/B arms and weights."""
        assert self._handler is not None
        snapshot = self._handler.snapshot
        documents: list[dict[str, Any]] = []
        for route in snapshot.config.routes:
            if route.canary is not None:
                documents.append(snapshot.canaries[route.name].document())
            elif route.ab is not None:
                ab = route.ab
                documents.append(
                    {
                        "route": route.name,
                        "mode": "ab",
                        "arms": [
                            {"name": arm.name, "url": redact_url(arm.url), "weight": arm.weight}
                            for arm in ab.arms
                        ],
                        "assignment_key": ab.assignment_key,
                        "layer": ab.layer,
                        "layer_share": list(ab.layer_share),
                        "arm_header": ab.arm_header,
                    }
                )
        return _json({"experiments": documents})

    async def _experiment_action(self, request: web.Request) -> web.Response:
        """``POST /experiments/<route>/<action>``: pause, resume, promote, rollback, reset."""
        assert self._handler is not None
        route, action = request.match_info["route"], request.match_info["action"]
        controller = self._handler.snapshot.canaries.get(route)
        if controller is None:
            return _json({"error": f"no canary route named {route!r}"}, status=404)
        if action not in OPERATOR_ACTIONS:
            known = ", ".join(OPERATOR_ACTIONS)
            return _json({"error": f"unknown action {action!r}; one of: {known}"}, status=404)
        by = request.headers.get("X-Operator") or f"admin@{request.remote}"
        note = request.query.get("note")
        try:
            decision = controller.act(action, by=by, note=note)
        except CanaryActionError as exc:
            return _json({"error": str(exc), "status": controller.canary.status}, status=409)
        return _json({"decision": decision.to_dict(), "experiment": controller.document()})

    @web.middleware
    async def _require_token(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bearer token on everything but the probes and the scrape endpoint."""
        token = self.config.main.admin_token
        if token is None or request.path in OPEN_ADMIN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            return _json(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="shadowproxy"'},
            )
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        # A degraded recorder does not make the proxy unready: taking the pod out of
        # service would stop production traffic over a logging problem.
        recorder = self.sink.health()
        status = "ok" if recorder.get("status") == "ok" else "degraded"
        body = {"status": status if self.ready else "starting", "recorder": recorder}
        return _json(body, status=200 if self.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _feedback(self, request: web.Request) -> web.Response:
        """Ground-truth labels by request id, recorded next to the pairs."""
        if self.feedback is None:
            return _json({"error": "recording is not enabled"}, status=404)
        try:
            items = parse_feedback(await request.read(), time.time())
        except FeedbackError as exc:
            return _json({"error": str(exc)}, status=400)
        except web.HTTPRequestEntityTooLarge:
            return _json({"error": f"body over {MAX_FEEDBACK_BYTES} bytes"}, status=413)
        if not self.feedback.submit_feedback(items):
            return _json({"error": "recorder buffer full; retry later"}, status=503)
        return _json({"accepted": len(items)}, status=202)

    async def _routes(self, request: web.Request) -> web.Response:
        choices = self.auto_choices() if self.auto_choices is not None else {}
        assert self._handler is not None
        snapshot = self._handler.snapshot
        runners = {
            name: [*runtime.shadows, *([runtime.check] if runtime.check is not None else [])]
            for name, runtime in snapshot.routes.items()
        }
        return _json(routes_document(snapshot.config, runners, choices))

    async def _reload(self, request: web.Request) -> web.Response:
        result = await self.reload()
        if result.ok:
            return _json({"result": "success", "routes": result.routes})
        return _json({"result": "failure", "error": result.error}, status=result.status)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _bind(runner: web.BaseRunner, listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), backlog=1024, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    address = server.sockets[0].getsockname()  # type: ignore[attr-defined]
    return address[0], address[1]


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
) -> None:
    """Run until SIGTERM or SIGINT, then shut down in order; reload on SIGHUP.

    ``supervisor_pid``: a worker of ``serve --workers N`` stops, in order, once that
    process is gone (even killed), so no orphan keeps serving on the shared port.

    By default pairs are compared and recorded to Parquet; ``sink_factory`` replaces
    that (benchmarks, embedding). ``load`` reads the config again for a reload.
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
        process = RecorderProcess(config, metrics)
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
