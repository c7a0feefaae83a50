"""What the proxy serves with: a snapshot built from one ``Config``, replaced on reload.

A ``Snapshot`` holds the route table, each route's ``RouteRuntime`` (production pool,
shadow runners, metric children) and the default upstream. Nothing in it changes after
it is built but its ``in_flight`` count. ``ProxyHandler`` reads the current snapshot once
per request and keeps it to the end, so a request finishes under the config it started
with, whatever reloads happen meanwhile.

A reload (``Server.reload`` in ``shadowproxy.app``), step by step:

1. load and validate the files; any error rejects the new config whole;
2. refuse a change to a setting only a restart applies (``RESTART_ONLY``);
3. ``build`` the new snapshot, reusing what did not change: production pools by
   (origin, pool settings), shadow lanes (pool, in-flight count, breaker) by
   (route, shadow, url, max_in_flight), runners whose settings (chaos rules
   included) are all the same; a canary's disagreement check is a runner like these;
4. swap it into the handler: new requests use it;
5. ``Retirer``: once no request holds an older snapshot and no copy runs on a dropped
   lane, close the pools the new snapshot no longer uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeGuard

from shadowproxy.config import Config, MainConfig, RouteConfig, ShadowConfig
from shadowproxy.errors import ConfigError
from shadowproxy.experiments.chaos import PRODUCTION, ChaosRule, rules_for
from shadowproxy.http.client import Pool
from shadowproxy.metrics import DEFAULT_ROUTE, Metrics
from shadowproxy.proxy.arms import (
    ABAssigner,
    Arm,
    Assigner,
    CanaryAssigner,
    CanaryController,
    check_shadow,
)
from shadowproxy.proxy.routing import RouteTable
from shadowproxy.proxy.tee import ShadowLane, ShadowRunner
from shadowproxy.proxy.upstream import Pools
from shadowproxy.tasks import TaskSet

log = logging.getLogger(__name__)

RESTART_ONLY = (
    "listen",
    "admin_listen",
    "shutdown_timeout_s",
    "max_header_bytes",
    "client_header_timeout_s",
    "client_keepalive_timeout_s",
    "client_body_timeout_s",
    "state_dir",
    "recording",
    "grpc_listen",
    "grpc_tls",
    "grpc_max_concurrent_streams",
)
"""Main-file keys a reload cannot apply: the listeners are bound, the writer is running."""

RETIRE_POLL_S = 0.1
"""How often a retirement looks whether the old snapshots and lanes are idle yet."""

ProductionKey = tuple[str, int, float]
"""(origin url, max_connections, keepalive_timeout_s)"""
LaneKey = tuple[str, str, str, int, float]
"""(route, shadow, url, max_in_flight, keepalive_timeout_s)"""


@dataclass(slots=True)
class RouteRuntime:
    """What the handler needs per route, built once: config, shadows, metric children."""

    name: str
    pool: Pool
    timeout_s: float
    max_body_bytes: int
    capture_bytes: int
    shadows: list[ShadowRunner]
    metrics: RouteMetrics
    chaos: ProductionChaos | None = None
    """Faults injected into production's calls; None (the norm) costs one check."""
    assigner: Assigner | None = None
    """Experiment routes: picks who answers each request (None: production, always)."""
    variants: dict[str, RouteRuntime] = field(default_factory=dict)
    """This route answered by an experiment arm: same route, the arm's pool and timeout."""
    check: ShadowRunner | None = None
    """Canary routes with a disagreement guardrail: the copy to production, among the
    candidate variant's ``shadows`` only (so only candidate-served requests send it)."""
    watch_rate: float = 0.0
    """``monitor.sample_rate``: the share of production's answers the writer watches."""
    version_header: str | None = None
    """``monitor.version.header`` (lower case): kept from production's response headers."""


class ProductionChaos:
    """A route's chaos rules on production (``allow_production``), with their counters."""

    __slots__ = ("injected", "rng", "rules")

    def __init__(
        self,
        rules: tuple[ChaosRule, ...],
        metrics: Metrics,
        route: str,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.rules = rules
        self.rng = rng
        self.injected = {
            rule.fault: metrics.chaos_injected.labels(route, PRODUCTION, rule.fault)
            for rule in rules
        }


class RouteMetrics:
    __slots__ = ("_codes", "_requests", "duration", "upstream")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self._requests = metrics.requests
        self._codes: dict[tuple[int, str], object] = {}
        self.duration = metrics.request_duration.labels(route)
        self.upstream = metrics.upstream_duration.labels(route, "production", "production")

    def count(self, route: str, code: int, grpc_status: str = "") -> None:
        """One answered request; ``grpc_status`` (a code name) for gRPC calls only."""
        key = (code, grpc_status)
        child = self._codes.get(key)
        if child is None:
            child = self._codes[key] = self._requests.labels(route, str(code), grpc_status)
        child.inc()  # type: ignore[attr-defined]


def route_runtime(
    route: RouteConfig, pool: Pool, shadows: list[ShadowRunner], metrics: Metrics
) -> RouteRuntime:
    rules = rules_for(route.chaos, PRODUCTION)
    return RouteRuntime(
        name=route.name,
        pool=pool,
        timeout_s=route.production.timeout_s,
        max_body_bytes=route.max_body_bytes,
        capture_bytes=route.max_capture_bytes,
        shadows=shadows,
        metrics=RouteMetrics(metrics, route.name),
        chaos=ProductionChaos(rules, metrics, route.name) if rules else None,
        watch_rate=route.monitor.sample_rate if route.monitor is not None else 0.0,
        version_header=_version_header(route),
    )


def _version_header(route: RouteConfig) -> str | None:
    header = route.monitor.version.header if route.monitor is not None else None
    return header.lower() if header is not None else None


@dataclass(eq=False, slots=True)
class Snapshot:
    """Everything one config serves with. Build it with ``build``."""

    config: Config
    table: RouteTable
    routes: dict[str, RouteRuntime]
    default: RouteRuntime | None
    production: dict[ProductionKey, Pool]
    lanes: dict[LaneKey, ShadowLane]
    canaries: dict[str, CanaryController] = dataclasses.field(default_factory=dict)
    """Canary routes' controllers by route; a reload hands them on (their state lives on)."""
    in_flight: int = 0
    """Requests that started under this snapshot and have not finished (the handler
    counts them): its pools stay open until it is zero."""

    def runners(self) -> Iterator[ShadowRunner]:
        """Every shadow runner, canary checks included."""
        for runtime in self.routes.values():
            yield from runtime.shadows
            if runtime.check is not None:
                yield runtime.check

    def pools(self) -> set[Pool]:
        return {*self.production.values(), *(lane.pool for lane in self.lanes.values())}


def still_serves(
    old: ShadowRunner | None, lane: ShadowLane, route: RouteConfig, shadow: ShadowConfig
) -> TypeGuard[ShadowRunner]:
    """Whether a reload keeps a shadow's runner (its in-flight copies and breaker state
    with it): the same lane, shadow config, capture bound and chaos, over HTTP or gRPC."""
    return (
        old is not None
        and old.lane is lane
        and old.config == shadow
        and old.route.max_capture_bytes == route.max_capture_bytes
        and old.route.chaos == route.chaos
    )


def build(
    config: Config, metrics: Metrics, pools: Pools, previous: Snapshot | None = None
) -> Snapshot:
    """A snapshot of ``config``; what ``previous`` has with the same settings is reused."""
    main = config.main
    keepalive = main.upstream_pool.keepalive_timeout_s
    old_production = previous.production if previous else {}
    old_lanes = previous.lanes if previous else {}
    old_runners = {(r.route.name, r.config.name): r for r in previous.runners()} if previous else {}
    production: dict[ProductionKey, Pool] = {}
    lanes: dict[LaneKey, ShadowLane] = {}

    def production_pool(url: str) -> Pool:
        # Routes on one origin share a pool; kept pools keep their keep-alive connections.
        key = (url, main.upstream_pool.max_connections, keepalive)
        pool = production.get(key) or old_production.get(key)
        if pool is None:
            pool = pools.open(*key)
        production[key] = pool
        return pool

    def runner(route: RouteConfig, shadow: ShadowConfig) -> ShadowRunner:
        key = (route.name, shadow.name, shadow.url, shadow.max_in_flight, keepalive)
        lane = old_lanes.get(key)
        if lane is None:
            # One connection per allowed copy: the in-flight bound is also the socket bound.
            lane = ShadowLane(pools.open(*key[2:]), shadow.circuit_breaker)
        lanes[key] = lane
        old = old_runners.get((route.name, shadow.name))
        if still_serves(old, lane, route, shadow):
            return old
        return ShadowRunner(route, shadow, lane, metrics)

    # gRPC routes are served by their own listener (``shadowproxy.proxy.grpc_runtime``).
    http_routes = [route for route in config.routes if not route.is_grpc]
    routes = {
        route.name: route_runtime(
            route,
            production_pool(route.production.url),
            [runner(route, shadow) for shadow in route.shadows],
            metrics,
        )
        for route in http_routes
    }
    default = None
    if main.default_upstream is not None:
        default = RouteRuntime(
            name=DEFAULT_ROUTE,
            pool=production_pool(main.default_upstream),
            timeout_s=main.default_upstream_timeout_s,
            max_body_bytes=0,
            capture_bytes=0,
            shadows=[],
            metrics=RouteMetrics(metrics, DEFAULT_ROUTE),
        )
    canaries = _experiments(
        config, routes, production_pool, runner, metrics, previous.canaries if previous else {}
    )
    table = RouteTable(http_routes)
    return Snapshot(config, table, routes, default, production, lanes, canaries)


def _experiments(
    config: Config,
    routes: dict[str, RouteRuntime],
    pool_of: Callable[[str], Pool],
    runner_of: Callable[[RouteConfig, ShadowConfig], ShadowRunner],
    metrics: Metrics,
    old: dict[str, CanaryController],
) -> dict[str, CanaryController]:
    """Give experiment routes their assigner and arm variants (a canary's candidate
    variant also its disagreement check); returns the canaries."""
    canaries: dict[str, CanaryController] = {}
    now = time.time()
    for route in config.routes:
        runtime = routes.get(route.name)
        if runtime is None:
            continue  # a gRPC route: never an experiment
        arms: list[Arm] = []
        if route.ab is not None:
            arms = [Arm(a.name, pool_of(a.url), a.timeout_s) for a in route.ab.arms]
            runtime.assigner = ABAssigner(route, route.ab, {a.name: a for a in arms}, metrics)
        elif route.canary is not None:
            spec = route.canary
            controller = old.get(route.name)
            if controller is None:
                controller = CanaryController(route.name, spec, config.main.state_dir, metrics, now)
            elif controller.spec != spec:
                controller.adopt(spec, now)
            canaries[route.name] = controller
            candidate = spec.candidate
            arms = [Arm(candidate.name, pool_of(candidate.url), candidate.timeout_s)]
            runtime.assigner = CanaryAssigner(route, arms[0], controller)
            check = check_shadow(route)
            runtime.check = runner_of(route, check) if check is not None else None
        shadows = runtime.shadows if runtime.check is None else [*runtime.shadows, runtime.check]
        runtime.variants = {
            arm.name: replace(
                runtime,
                pool=arm.pool,
                timeout_s=arm.timeout_s,
                assigner=None,
                variants={},
                shadows=shadows,
                check=None,
            )
            for arm in arms
        }
    return canaries


def check_reloadable(running: Config, new: Config) -> None:
    """Raise ``ConfigError`` naming the first restart-only setting ``new`` changes."""
    after = _restart_only(new.main)
    for key, before in _restart_only(running.main).items():
        if after[key] != before:
            raise ConfigError(
                new.source,
                key,
                f"cannot change on reload (running with {before!r}), restart to apply",
            )


def _restart_only(main: MainConfig) -> dict[str, object]:
    """The restart-only settings by field path (``recording`` key by key)."""
    fields = {key: getattr(main, key) for key in RESTART_ONLY if key != "recording"}
    recording = main.recording
    fields.update(
        (f"recording.{name}", getattr(recording, name)) for name in type(recording).model_fields
    )
    return fields


class Retirer:
    """Closes the pools a reload dropped, once nothing can use them any more.

    A request holds the snapshot it started with, and a shadow copy holds its lane. A
    pool the new snapshot dropped may still be used by a request of any older snapshot
    (a pool kept by one reload can be dropped by the next), so it is closed only when
    every older snapshot has no request left and the dropped lanes have no copy left.
    Closing earlier would cut those requests and copies off mid-answer.
    """

    def __init__(self, pools: Pools, metrics: Metrics) -> None:
        self._pools = pools
        self._metrics = metrics
        self._held: list[Snapshot] = []
        self._tasks = TaskSet()

    def retire(self, old: Snapshot, new: Snapshot) -> None:
        # Only the current snapshot is handed out: one no request holds stays unheld.
        self._held = [snapshot for snapshot in (*self._held, old) if snapshot.in_flight]
        self._forget_removed_shadows(old, new)
        dropped = old.pools() - new.pools()
        if not dropped:
            return
        lanes = [lane for key, lane in old.lanes.items() if new.lanes.get(key) is not lane]
        self._tasks.spawn(
            self._close_when_unused(list(self._held), lanes, dropped), name="reload:retire"
        )

    async def _close_when_unused(
        self, held: list[Snapshot], lanes: list[ShadowLane], pools: set[Pool]
    ) -> None:
        # Polled rather than signalled: a wake-up would cost every request a check.
        while _in_use(held, lanes):  # noqa: ASYNC110
            await asyncio.sleep(RETIRE_POLL_S)
        await self._pools.close(pools)
        log.info("reload: closed %d upstream pool(s) no longer in use", len(pools))

    def _forget_removed_shadows(self, old: Snapshot, new: Snapshot) -> None:
        """Drop the gauges that describe a shadow no longer configured (the counters
        stay, as Prometheus expects): a stale ``circuit_open`` would keep alerting."""
        kept = {(r.route.name, r.config.name, r.config.role) for r in new.runners()}
        for runner in old.runners():
            route, shadow, role = runner.route.name, runner.config.name, runner.config.role
            if (route, shadow, role) in kept:
                continue
            self._metrics.shadow_info.remove(route, shadow, role)
            if not any(k[:2] == (route, shadow) for k in kept):
                self._metrics.shadow_circuit_open.remove(route, shadow)

    async def close(self) -> None:
        """At shutdown: stop waiting; the server closes every pool itself."""
        await self._tasks.drain(0)


def _in_use(held: list[Snapshot], lanes: list[ShadowLane]) -> bool:
    return any(snapshot.in_flight for snapshot in held) or any(lane.in_flight for lane in lanes)
