"""What the gRPC listener serves with: the gRPC routes of one ``Config``, swapped on reload.

The gRPC twin of ``shadowproxy.proxy.runtime``: a ``GrpcSnapshot`` holds the route table
(by service or method), each route's production channel, shadow runners and metric
children. Shadows are ``ShadowRunner``s like HTTP ones (sampling, in-flight bound,
breaker, chaos, metrics, pairs), whose copy is a gRPC call on a channel of their own
(``GrpcShadowRunner``). A reload reuses production channels by (url, message limit)
and shadow lanes by (route, shadow, url, max_in_flight, message limit); channels the
new snapshot dropped are closed once no call of an older snapshot can use them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from shadowproxy.config import CircuitBreakerConfig, Config, RouteConfig, ShadowConfig
from shadowproxy.experiments.chaos import PRODUCTION, rules_for
from shadowproxy.grpc.channels import Channels
from shadowproxy.grpc.codes import http_equivalent
from shadowproxy.grpc.metadata import Metadata, shadow_metadata
from shadowproxy.metrics import Metrics
from shadowproxy.proxy.breaker import CircuitBreaker
from shadowproxy.proxy.routing import GrpcRouteTable
from shadowproxy.proxy.runtime import (
    RETIRE_POLL_S,
    ProductionChaos,
    RouteMetrics,
    still_serves,
)
from shadowproxy.proxy.tee import ShadowLane, ShadowRunner
from shadowproxy.records import RequestInfo, ShadowOutcome, ShadowResult
from shadowproxy.tasks import TaskSet

log = logging.getLogger(__name__)

UNARY_SERVICE = "inference.GRPCInferenceService"
STREAMING_METHODS = frozenset({"/inference.GRPCInferenceService/ModelStreamInfer"})
"""Methods of the Open Inference service that stream; every other one is unary."""

ChannelKey = tuple[str, int]
"""(url, grpc_max_message_bytes)"""
GrpcLaneKey = tuple[str, str, str, int, int]
"""(route, shadow, url, max_in_flight, grpc_max_message_bytes)"""


class UnaryCalls:
    """A channel's unary callables by method path, made once (making one per call
    costs a few microseconds on the production path)."""

    __slots__ = ("_calls", "channel")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._calls: dict[str, Any] = {}

    def __call__(self, method: str) -> Any:
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self.channel.unary_unary(method)
        return call


class GrpcLane(ShadowLane):
    """A shadow's way to its gRPC upstream: its own channel, in-flight count, breaker."""

    __slots__ = ("calls",)

    def __init__(self, channel: grpc.aio.Channel, breaker: CircuitBreakerConfig) -> None:
        # No HTTP pool: the channel is this lane's connection pool.
        self.calls = UnaryCalls(channel)
        self.breaker = CircuitBreaker(breaker)
        self.in_flight = 0


class GrpcShadowRunner(ShadowRunner):
    """A ``ShadowRunner`` whose copy is a unary gRPC call with the request's message.

    Outcomes: ``timeout`` past ``timeout_s``, ``error`` when the shadow is unavailable
    (refused, reset, black-holed connection: gRPC reports them all as ``UNAVAILABLE``),
    else ``ok`` with the status it answered (a non-``OK`` one is incomparable)."""

    async def _fetch(
        self,
        info: RequestInfo,
        headers: list[tuple[str, str]],
        raw_path: str,
        timeout_s: float,
    ) -> ShadowResult:
        lane = self.lane
        assert isinstance(lane, GrpcLane)
        metadata = shadow_metadata(_as_metadata(headers), self._drop_headers, self._set_headers)
        started = time.perf_counter()
        try:
            response = await lane.calls(raw_path)(info.body, metadata=metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            latency = (time.perf_counter() - started) * 1000.0
            code = exc.code()
            name = code.name
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                error = f"no complete answer within {timeout_s:g}s"
                return ShadowResult(
                    outcome="timeout", status=None, latency_ms=latency, error=error, body=b"",
                    body_truncated=False, content_type=None, grpc_status=name,
                )  # fmt: skip
            outcome: ShadowOutcome = "error" if code == grpc.StatusCode.UNAVAILABLE else "ok"
            return ShadowResult(
                outcome=outcome, status=http_equivalent(name), latency_ms=latency,
                error=f"{name}: {exc.details()}", body=b"", body_truncated=False,
                content_type=None, grpc_status=name,
            )  # fmt: skip
        latency = (time.perf_counter() - started) * 1000.0
        cap = self.route.max_capture_bytes
        return ShadowResult(
            outcome="ok", status=200, latency_ms=latency, error=None, body=response[:cap],
            body_truncated=len(response) > cap, content_type="application/grpc",
            grpc_status="OK",
        )  # fmt: skip


def _as_metadata(headers: list[tuple[str, str]]) -> Metadata:
    return headers  # type: ignore[return-value]  # metadata rides in RequestInfo's header list


@dataclass(slots=True)
class GrpcRoute:
    """What the gRPC handler needs per route, built once."""

    name: str
    calls: UnaryCalls
    timeout_s: float
    max_message_bytes: int
    capture_bytes: int
    shadows: list[ShadowRunner]
    metrics: RouteMetrics
    chaos: ProductionChaos | None = None


@dataclass(eq=False, slots=True)
class GrpcSnapshot:
    config: Config
    table: GrpcRouteTable
    routes: dict[str, GrpcRoute]
    production: dict[ChannelKey, grpc.aio.Channel]
    lanes: dict[GrpcLaneKey, GrpcLane]
    services: frozenset[str] = field(default_factory=frozenset)
    in_flight: int = 0

    def runners(self) -> dict[str, list[ShadowRunner]]:
        return {name: list(route.shadows) for name, route in self.routes.items()}

    def channels(self) -> set[grpc.aio.Channel]:
        lanes = {lane.calls.channel for lane in self.lanes.values()}
        return {*self.production.values(), *lanes}


def grpc_routes(config: Config) -> list[RouteConfig]:
    return [route for route in config.routes if route.is_grpc]


def max_message_bytes(config: Config) -> int:
    """The listener's hard limit: twice the largest a route allows. Each route checks
    its own limit and counts what it refuses; a message past the hard limit is refused
    by gRPC's core before any Python code sees it (and so is not counted)."""
    largest = max((route.grpc_max_message_bytes for route in grpc_routes(config)), default=0)
    return 2 * max(largest, 4 << 20)


def build_grpc(
    config: Config, metrics: Metrics, channels: Channels, previous: GrpcSnapshot | None = None
) -> GrpcSnapshot:
    """A snapshot of ``config``'s gRPC routes; what ``previous`` has alike is reused."""
    old_production = previous.production if previous else {}
    old_lanes = previous.lanes if previous else {}
    old_runners = {
        (route, runner.config.name): runner
        for route, runners in (previous.runners() if previous else {}).items()
        for runner in runners
    }
    production: dict[ChannelKey, grpc.aio.Channel] = {}
    lanes: dict[GrpcLaneKey, GrpcLane] = {}

    def production_channel(route: RouteConfig) -> grpc.aio.Channel:
        key = (route.production.url, route.grpc_max_message_bytes)
        channel = production.get(key) or old_production.get(key)
        if channel is None:
            channel = channels.open(*key)
        production[key] = channel
        return channel

    def runner(route: RouteConfig, shadow: ShadowConfig) -> ShadowRunner:
        key = (route.name, shadow.name, shadow.url, shadow.max_in_flight,
               route.grpc_max_message_bytes)  # fmt: skip
        lane = old_lanes.get(key)
        if lane is None:
            lane = GrpcLane(channels.open(shadow.url, key[4]), shadow.circuit_breaker)
        lanes[key] = lane
        old = old_runners.get((route.name, shadow.name))
        if still_serves(old, lane, route, shadow):
            return old
        return GrpcShadowRunner(route, shadow, lane, metrics)

    routes: dict[str, GrpcRoute] = {}
    calls: dict[int, UnaryCalls] = {}
    for route in grpc_routes(config):
        channel = production_channel(route)
        rules = rules_for(route.chaos, PRODUCTION)
        routes[route.name] = GrpcRoute(
            name=route.name,
            calls=calls.setdefault(id(channel), UnaryCalls(channel)),
            timeout_s=route.production.timeout_s,
            max_message_bytes=route.grpc_max_message_bytes,
            capture_bytes=route.max_capture_bytes,
            shadows=[runner(route, shadow) for shadow in route.shadows],
            metrics=RouteMetrics(metrics, route.name),
            chaos=ProductionChaos(rules, metrics, route.name) if rules else None,
        )
    services = frozenset(
        (route.match.grpc or "").partition("/")[0] for route in grpc_routes(config)
    )
    table = GrpcRouteTable(grpc_routes(config))
    return GrpcSnapshot(config, table, routes, production, lanes, services)


class GrpcRetirer:
    """Closes the channels a reload dropped once no call can use them any more (the
    same rule as ``runtime.Retirer``: no request of an older snapshot, no copy on a
    dropped lane)."""

    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._held: list[GrpcSnapshot] = []
        self._tasks = TaskSet()

    def retire(self, old: GrpcSnapshot, new: GrpcSnapshot) -> None:
        self._held = [snapshot for snapshot in (*self._held, old) if snapshot.in_flight]
        dropped = old.channels() - new.channels()
        if not dropped:
            return
        lanes = [lane for key, lane in old.lanes.items() if new.lanes.get(key) is not lane]
        held = list(self._held)
        self._tasks.spawn(self._close_when_unused(held, lanes, dropped), name="reload:grpc")

    async def _close_when_unused(
        self, held: list[GrpcSnapshot], lanes: list[GrpcLane], channels: set[grpc.aio.Channel]
    ) -> None:
        while any(s.in_flight for s in held) or any(lane.in_flight for lane in lanes):  # noqa: ASYNC110
            await asyncio.sleep(RETIRE_POLL_S)
        await self._channels.close(channels)
        log.info("reload: closed %d gRPC channel(s) no longer in use", len(channels))

    async def close(self) -> None:
        await self._tasks.drain(0)
