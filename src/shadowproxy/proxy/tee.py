"""The shadow tee: fan a request out to shadows without production ever waiting.

For each shadow of a matched route the tee decides, on the event loop and without
I/O, whether the request is sampled and whether a copy may be sent (body complete,
circuit closed, in-flight bound not hit). Copies run as background tasks. Each
sampled (request, shadow) ends as exactly one ``Pair`` handed to the sink once both
production's result and the shadow's outcome are known, whichever comes last.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

from shadowproxy.config import CircuitBreakerConfig, RouteConfig, ShadowConfig
from shadowproxy.experiments.chaos import INJECTED_BODY, SHADOW_PREFIX, Injection, draw, rules_for
from shadowproxy.http.client import Pool
from shadowproxy.http.headers import shadow_request_headers
from shadowproxy.metrics import Metrics
from shadowproxy.proxy.breaker import CircuitBreaker
from shadowproxy.proxy.routing import is_sampled
from shadowproxy.proxy.upstream import fetch_shadow
from shadowproxy.records import (
    OUTCOMES,
    Pair,
    PairSink,
    ProductionResult,
    RequestInfo,
    ShadowOutcome,
    ShadowResult,
)
from shadowproxy.tasks import TaskSet


def not_sent(outcome: ShadowOutcome, reason: str) -> ShadowResult:
    return ShadowResult(
        outcome=outcome, status=None, latency_ms=None, error=reason, body=b"",
        body_truncated=False, content_type=None,
    )  # fmt: skip


class ShadowLane:
    """A shadow's way to its upstream: the pool, the copies in flight on it, the breaker.

    ``max_in_flight`` both bounds the copies and sizes the pool, so they belong
    together. A reload that leaves a shadow's ``url`` and ``max_in_flight`` (and the
    pool keep-alive) alone keeps its lane: connections, in-flight count and circuit
    state carry over to the new runner, and the old runner's copies still in flight
    count against the same bound.
    """

    __slots__ = ("breaker", "in_flight", "pool")

    def __init__(self, pool: Pool, breaker: CircuitBreakerConfig) -> None:
        self.pool = pool
        self.breaker = CircuitBreaker(breaker)
        self.in_flight = 0


class ShadowRunner:
    """One shadow of one route: its settings, its lane and its metric children."""

    def __init__(
        self,
        route: RouteConfig,
        config: ShadowConfig,
        lane: ShadowLane,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.route = route
        self.config = config
        self.lane = lane
        # From the route this runner was built with: a reload that changes them builds
        # a new runner, so new copies follow the new rules.
        self.chaos = rules_for(route.chaos, SHADOW_PREFIX + config.name)
        self._rng = rng
        if lane.breaker.config != config.circuit_breaker:
            # New thresholds start from a closed circuit (the lane is this shadow's only).
            lane.breaker = CircuitBreaker(config.circuit_breaker)
        self.methods = frozenset(config.methods) if config.methods else None
        self._drop_headers = frozenset(name.lower() for name in config.headers.drop)
        self._set_headers = dict(config.headers.set)
        self.clock = clock
        labels = (route.name, config.name)
        self._outcomes = {
            outcome: metrics.shadow_requests.labels(*labels, outcome) for outcome in OUTCOMES
        }
        self._skipped = metrics.shadow_skipped
        # Not reset here: copies of the runner this one replaces may still be counted.
        self._in_flight_gauge = metrics.shadow_in_flight.labels(*labels)
        # Read at scrape time from this runner's lane, so the newest runner of a shadow
        # owns the series and a replaced lane's late results cannot set it.
        metrics.shadow_circuit_open.labels(*labels).set_function(
            lambda: 0.0 if lane.breaker.state == "closed" else 1.0
        )
        self._latency = metrics.upstream_duration.labels(route.name, config.name, "shadow")
        metrics.shadow_info.labels(*labels, config.role).set(1)
        self._injected = {
            rule.fault: metrics.chaos_injected.labels(*labels, rule.fault) for rule in self.chaos
        }

    @property
    def in_flight(self) -> int:
        return self.lane.in_flight

    @property
    def breaker(self) -> CircuitBreaker:
        return self.lane.breaker

    def decide(self, body_complete: bool) -> ShadowResult | None:
        """None: send a copy (the slot is taken). Otherwise the outcome of not sending."""
        if not body_complete:
            return not_sent("skipped", "body_too_large")
        lane = self.lane
        # The bound is checked before the breaker: a half-open breaker hands out its
        # single probe only to a copy that is really sent.
        if lane.in_flight >= self.config.max_in_flight:
            return not_sent("dropped", "max_in_flight")
        if not lane.breaker.allow(self.clock()):
            return not_sent("skipped", "circuit_open")
        lane.in_flight += 1
        self._in_flight_gauge.inc()
        return None

    def count(self, result: ShadowResult) -> None:
        self._outcomes[result.outcome].inc()
        if result.outcome == "skipped":
            self._skipped.labels(self.route.name, self.config.name, result.error or "").inc()

    async def send(
        self, info: RequestInfo, headers: list[tuple[str, str]], raw_path: str
    ) -> ShadowResult:
        lane = self.lane
        try:
            if self.chaos:
                result = await self._send_with_chaos(info, headers, raw_path)
            else:
                result = await self._fetch(info, headers, raw_path, self.config.timeout_s)
        finally:
            lane.in_flight -= 1
            self._in_flight_gauge.dec()
        if result.latency_ms is not None and result.outcome == "ok":
            self._latency.observe(result.latency_ms / 1000.0)
        lane.breaker.record(result.outcome == "ok", self.clock())
        return result

    async def _fetch(
        self,
        info: RequestInfo,
        headers: list[tuple[str, str]],
        raw_path: str,
        timeout_s: float,
    ) -> ShadowResult:
        """One call to this shadow with the request's copy, its header rules applied."""
        return await fetch_shadow(
            self.lane.pool,
            info.method,
            raw_path,
            shadow_request_headers(headers, self._drop_headers, self._set_headers),
            info.body,
            timeout_s,
            self.route.max_capture_bytes,
        )

    async def _send_with_chaos(
        self, info: RequestInfo, headers: list[tuple[str, str]], raw_path: str
    ) -> ShadowResult:
        """The copy with the faults drawn for it. What they produce looks to the rest
        of the proxy (metrics, breaker, recorder) like the real thing, plus the marker."""
        injection = draw(self.chaos, self._rng) or Injection()
        for fault in injection.faults:
            self._injected[fault].inc()
        timeout = self.config.timeout_s
        marker = injection.marker or None
        if injection.abort_status is not None:
            return ShadowResult(
                outcome="ok", status=injection.abort_status, latency_ms=0.0, error=None,
                body=INJECTED_BODY, body_truncated=False, content_type="application/json",
                chaos=marker,
            )  # fmt: skip
        started = time.perf_counter()
        if injection.delay_s >= timeout:
            await asyncio.sleep(timeout)
            error = f"no complete answer within {timeout:g}s (injected delay)"
            return ShadowResult(
                outcome="timeout", status=None, latency_ms=timeout * 1000.0, error=error,
                body=b"", body_truncated=False, content_type=None, chaos=marker,
            )  # fmt: skip
        if injection.delay_s:
            await asyncio.sleep(injection.delay_s)
        result = await self._fetch(info, headers, raw_path, timeout - injection.delay_s)
        result.chaos = marker
        if injection.delay_s:
            result.latency_ms = (time.perf_counter() - started) * 1000.0
            if result.outcome == "timeout":
                result.error = f"no complete answer within {timeout:g}s (injected delay)"
        return result


class Exchange:
    """One request's shadow slots; emits each pair when both sides are known."""

    __slots__ = ("_production", "_results", "_runners", "_sink", "request")

    def __init__(self, request: RequestInfo, sink: PairSink) -> None:
        self.request = request
        self._sink = sink
        self._runners: list[ShadowRunner] = []
        self._results: list[ShadowResult | None] = []
        self._production: ProductionResult | None = None

    def add(self, runner: ShadowRunner) -> int:
        self._runners.append(runner)
        self._results.append(None)
        return len(self._runners) - 1

    def resolve(self, slot: int, result: ShadowResult) -> None:
        self._results[slot] = result
        self._runners[slot].count(result)
        if self._production is not None:
            self._emit(slot, self._production, result)

    def finish(self, production: ProductionResult) -> None:
        self._production = production
        for slot, result in enumerate(self._results):
            if result is not None:
                self._emit(slot, production, result)

    def _emit(self, slot: int, production: ProductionResult, result: ShadowResult) -> None:
        config = self._runners[slot].config
        self._sink.submit(
            Pair(
                request=self.request,
                shadow=config.name,
                role=config.role,
                production=production,
                result=result,
            )
        )


class Tee:
    def __init__(self, sink: PairSink) -> None:
        self.sink = sink
        self.tasks = TaskSet()

    def start(
        self,
        runners: list[ShadowRunner],
        info: RequestInfo,
        headers: list[tuple[str, str]],
        raw_path: str,
        client_headers: Mapping[str, str],
        skip_reason: str | None = None,
    ) -> Exchange | None:
        """Sample ``runners`` and send their copies; ``skip_reason``: sample, but send
        none (each sampled shadow's row says why, e.g. ``streaming``)."""
        exchange: Exchange | None = None
        for runner in runners:
            if runner.methods is not None and info.method not in runner.methods:
                continue  # not a request this shadow takes: not sampled, no row
            key_header = runner.config.sample_key
            key = client_headers.get(key_header) if key_header else None
            if not is_sampled(runner.config, key):
                continue
            if exchange is None:
                exchange = Exchange(info, self.sink)
            slot = exchange.add(runner)
            if skip_reason is not None:
                exchange.resolve(slot, not_sent("skipped", skip_reason))
                continue
            refused = runner.decide(info.body_complete)
            if refused is not None:
                exchange.resolve(slot, refused)
                continue
            self.tasks.spawn(
                self._copy(exchange, slot, runner, headers, raw_path),
                name=f"shadow:{runner.route.name}:{runner.config.name}",
            )
        return exchange

    async def _copy(
        self,
        exchange: Exchange,
        slot: int,
        runner: ShadowRunner,
        headers: list[tuple[str, str]],
        raw_path: str,
    ) -> None:
        try:
            result = await runner.send(exchange.request, headers, raw_path)
        except asyncio.CancelledError:
            # Shutdown ran out of drain time: the pair is still recorded.
            exchange.resolve(slot, not_sent("error", "shutdown: drain timeout"))
            raise
        exchange.resolve(slot, result)

    async def drain(self, grace_s: float) -> int:
        return await self.tasks.drain(grace_s)
