"""The gRPC request path: match -> size check -> tee -> production -> pass back exactly.

The gRPC twin of ``proxy.handler``, as lean: message bytes are never decoded here.

Unary calls (``Calls.kind``: the Open Inference methods but ``ModelStreamInfer``): the
copies start first, each sampled shadow its own call with its own deadline
(``timeout_s``); production's call is bounded by the client's deadline (and the
route's ``timeout_s``), and its status, message, initial and trailing metadata go back
as they came, with ``x-request-id`` added to the initial metadata. A client that
cancels or runs out of deadline cancels production's call too.

Streams (every other method: the proxy cannot know a method's shape from its bytes)
pass through message by message, never buffered. A stream that turns out to be a
single request message is copied to the shadows as a unary call as soon as the client
half-closes; any other stream is not shadowed: its sampled shadows get a row skipped
with reason ``streaming``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import grpc

from shadowproxy.experiments.chaos import draw
from shadowproxy.grpc.codes import from_http, http_equivalent
from shadowproxy.grpc.metadata import (
    Metadata,
    client_metadata,
    request_id_of,
    trailing_metadata,
    upstream_metadata,
)
from shadowproxy.grpc.server import Kind
from shadowproxy.metrics import UNMATCHED_ROUTE, Metrics
from shadowproxy.proxy.grpc_runtime import (
    STREAMING_METHODS,
    UNARY_SERVICE,
    GrpcRoute,
    GrpcSnapshot,
)
from shadowproxy.proxy.handler import CLIENT_CLOSED
from shadowproxy.proxy.runtime import RouteMetrics
from shadowproxy.proxy.tee import Exchange, Tee
from shadowproxy.records import ProductionResult, RequestInfo
from shadowproxy.tasks import TaskSet

_UNARY_PREFIX = f"/{UNARY_SERVICE}/"
STREAMING = "streaming"
"""The skip reason of a sampled shadow on a call that streams."""


class _Keys(Mapping[str, str]):
    """Metadata by key for ``sample_key``: keys are lower-case on the wire, while the
    config names a header as users write it (``X-User-Id``). Looked up in the metadata
    list only when a shadow samples by key (most do not), not built for every call."""

    __slots__ = ("_metadata",)

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def __getitem__(self, key: str) -> str:
        key = key.lower()
        found = None
        for name, value in self._metadata:
            if name == key and isinstance(value, str):
                found = value  # the last of a repeated key, as a dict of them would keep
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, value in self._metadata if isinstance(value, str)))

    def __len__(self) -> int:
        return len(list(self))


class _Production:
    """Production's side of one call, filled in as it goes."""

    __slots__ = ("body", "chaos", "code", "error", "truncated")

    def __init__(self) -> None:
        self.code: str | None = None
        self.error: str | None = None
        self.body = b""
        self.truncated = False
        self.chaos: str | None = None

    def result(self, started: float) -> ProductionResult:
        latency = (time.perf_counter() - started) * 1000.0
        status = None if self.code is None else http_equivalent(self.code)
        content_type = "application/grpc" if self.code == "OK" else None
        return ProductionResult(
            status=status, latency_ms=latency, error=self.error, body=self.body,
            body_truncated=self.truncated, content_type=content_type, chaos=self.chaos,
            grpc_status=self.code,
        )  # fmt: skip


def _settle(
    route: GrpcRoute, exchange: Exchange | None, result: ProductionResult, duration_s: float
) -> None:
    """A unary call's bookkeeping once its answer is on its way."""
    if exchange is not None:
        exchange.finish(result)
    route.metrics.upstream.observe(result.latency_ms / 1000.0)
    route.metrics.duration.observe(duration_s)


class GrpcProxyHandler:
    """Serves with ``snapshot``; a reload replaces it (``proxy.grpc_runtime``)."""

    def __init__(self, snapshot: GrpcSnapshot, tee: Tee, metrics: Metrics) -> None:
        self.snapshot = snapshot
        self._tee = tee
        self._unmatched = RouteMetrics(metrics, UNMATCHED_ROUTE)
        self._pumps = TaskSet()

    def kind(self, method: str) -> Kind:
        if method.startswith(_UNARY_PREFIX) and method not in STREAMING_METHODS:
            return "unary"
        return "stream"

    def knows_service(self, service: str) -> bool:
        return service in self.snapshot.services

    # --- unary -----------------------------------------------------------------

    async def unary(self, method: str, request: bytes, context: Any) -> bytes:
        started = time.perf_counter()
        arrived = time.time()
        snapshot = self.snapshot
        config = snapshot.table.match(method)
        if config is None:
            return await self._unmatched_call(method, context)
        route = snapshot.routes[config.name]
        if len(request) > route.max_message_bytes:
            return await self._too_large(route, len(request), context)
        incoming = context.invocation_metadata() or ()
        request_id = request_id_of(incoming)
        metadata = upstream_metadata(incoming, request_id)
        snapshot.in_flight += 1
        outcome = _Production()
        exchange = self._start_copies(route, method, request_id, arrived, metadata, request)
        try:
            return await self._forward(
                route, method, request, metadata, request_id, context, outcome
            )
        finally:
            snapshot.in_flight -= 1
            result = outcome.result(started)
            # gRPC starts sending the answer as soon as this returns: the pair and the
            # histograms wait for the next turn of the loop, not the client.
            asyncio.get_running_loop().call_soon(
                _settle, route, exchange, result, time.perf_counter() - started
            )

    def _start_copies(
        self,
        route: GrpcRoute,
        method: str,
        request_id: str,
        arrived: float,
        metadata: Metadata,
        request: bytes,
        skip_reason: str | None = None,
    ) -> Exchange | None:
        if not route.shadows:
            return None
        headers: Any = metadata  # metadata rides where HTTP headers do (never recorded)
        info = RequestInfo(
            request_id=request_id, ts=arrived, route=route.name, method="POST", path=method,
            query="", headers=headers, body=request, body_complete=True, protocol="grpc",
        )  # fmt: skip
        return self._tee.start(route.shadows, info, headers, method, _Keys(metadata), skip_reason)

    async def _forward(
        self,
        route: GrpcRoute,
        method: str,
        request: bytes,
        metadata: Metadata,
        request_id: str,
        context: Any,
        outcome: _Production,
    ) -> bytes:
        if route.chaos is not None:
            await self._inject(route, context, outcome, request_id)
        remaining = context.time_remaining()
        timeout = route.timeout_s if remaining is None else min(remaining, route.timeout_s)
        call = route.calls(method)(request, metadata=metadata, timeout=timeout)
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            outcome.code, outcome.error = code.name, exc.details()
            route.metrics.count(route.name, http_equivalent(code.name), code.name)
            await context.send_initial_metadata(client_metadata(exc.initial_metadata(), request_id))
            await context.abort(
                code, exc.details() or "", trailing_metadata(exc.trailing_metadata())
            )
            raise  # abort raises; this line only satisfies the type checker
        except asyncio.CancelledError:
            call.cancel()
            outcome.code, outcome.error = "CANCELLED", "client cancelled or deadline passed"
            route.metrics.count(route.name, CLIENT_CLOSED, "CANCELLED")
            raise
        outcome.code = "OK"
        cap = route.capture_bytes
        outcome.body, outcome.truncated = response[:cap], len(response) > cap
        await context.send_initial_metadata(
            client_metadata(await call.initial_metadata(), request_id)
        )
        context.set_trailing_metadata(trailing_metadata(await call.trailing_metadata()))
        route.metrics.count(route.name, 200, "OK")
        return response

    async def _inject(
        self, route: GrpcRoute, context: Any, outcome: _Production, request_id: str
    ) -> None:
        """Production's faults: a delay, or an error in its place (the abort's HTTP
        status as the gRPC code gRPC maps it to)."""
        chaos = route.chaos
        assert chaos is not None
        injection = draw(chaos.rules, chaos.rng)
        if injection is None:
            return
        for fault in injection.faults:
            chaos.injected[fault].inc()
        outcome.chaos = injection.marker
        if injection.abort_status is None:
            await asyncio.sleep(injection.delay_s)
            return
        name = from_http(injection.abort_status)
        outcome.code, outcome.error = name, f"injected by chaos ({outcome.chaos})"
        route.metrics.count(route.name, http_equivalent(name), name)
        await context.send_initial_metadata(client_metadata((), request_id))
        await context.abort(grpc.StatusCode[name], outcome.error)

    async def _unmatched_call(self, method: str, context: Any) -> NoReturn:
        self._unmatched.count(UNMATCHED_ROUTE, http_equivalent("UNIMPLEMENTED"), "UNIMPLEMENTED")
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no route matches method {method}")
        raise AssertionError("abort raises")

    async def _too_large(self, route: GrpcRoute, size: int, context: Any) -> NoReturn:
        code = "RESOURCE_EXHAUSTED"
        route.metrics.count(route.name, http_equivalent(code), code)
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"message of {size} bytes is over grpc_max_message_bytes "
            f"({route.max_message_bytes}) of route {route.name!r}",
        )
        raise AssertionError("abort raises")

    # --- streams ---------------------------------------------------------------

    async def stream(self, method: str, context: Any) -> None:
        started = time.perf_counter()
        arrived = time.time()
        snapshot = self.snapshot
        config = snapshot.table.match(method)
        if config is None:
            await self._unmatched_call(method, context)
            return
        route = snapshot.routes[config.name]
        incoming = context.invocation_metadata() or ()
        request_id = request_id_of(incoming)
        metadata = upstream_metadata(incoming, request_id)
        outcome = _Production()
        if route.chaos is not None:
            await self._inject(route, context, outcome, request_id)
        remaining = context.time_remaining()
        call = route.calls.channel.stream_stream(method)(metadata=metadata, timeout=remaining)
        pump = _ClientPump(self, route, method, call, context, request_id, arrived, metadata)
        snapshot.in_flight += 1
        sender = self._pumps.spawn(pump.run(), name=f"grpc-stream:{route.name}")
        try:
            await self._relay(route, call, context, request_id, outcome, pump)
        finally:
            snapshot.in_flight -= 1
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if pump.too_large is None:
                result = outcome.result(started)
                if pump.exchange is not None:
                    pump.exchange.finish(result)
                route.metrics.upstream.observe(result.latency_ms / 1000.0)
            route.metrics.duration.observe(time.perf_counter() - started)

    async def _relay(
        self,
        route: GrpcRoute,
        call: Any,
        context: Any,
        request_id: str,
        outcome: _Production,
        pump: _ClientPump,
    ) -> None:
        """Production's messages to the client as they come, then its status."""
        first = True
        try:
            await context.send_initial_metadata(
                client_metadata(await call.initial_metadata(), request_id)
            )
            async for message in call:
                if first:
                    cap = route.capture_bytes
                    outcome.body, outcome.truncated = message[:cap], len(message) > cap
                    first = False
                else:
                    outcome.truncated = True
                await context.write(message)
            code, details = await call.code(), await call.details()
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            code, details, trailing = exc.code(), exc.details(), exc.trailing_metadata()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if pump.too_large is not None and task is not None and not task.cancelling():
                # The pump cancelled production's call: the client sent too much.
                await self._too_large(route, pump.too_large, context)
            call.cancel()
            outcome.code, outcome.error = "CANCELLED", "client cancelled or deadline passed"
            route.metrics.count(route.name, CLIENT_CLOSED, "CANCELLED")
            raise
        if pump.too_large is not None:
            await self._too_large(route, pump.too_large, context)
        outcome.code = code.name
        outcome.error = None if code == grpc.StatusCode.OK else details
        route.metrics.count(route.name, http_equivalent(code.name), code.name)
        if code != grpc.StatusCode.OK:
            await context.abort(code, details or "", trailing_metadata(trailing))
        context.set_trailing_metadata(trailing_metadata(trailing))


class _ClientPump:
    """The client's messages to production as they come; a stream of exactly one
    message is copied to the shadows as a unary call once the client half-closes."""

    def __init__(
        self,
        handler: GrpcProxyHandler,
        route: GrpcRoute,
        method: str,
        call: Any,
        context: Any,
        request_id: str,
        arrived: float,
        metadata: Metadata,
    ) -> None:
        self._handler = handler
        self._route = route
        self._method = method
        self._call = call
        self._context = context
        self._request_id = request_id
        self._arrived = arrived
        self._metadata = metadata
        self.exchange: Exchange | None = None
        self.too_large: int | None = None

    async def run(self) -> None:
        try:
            await self._pump()
        except (grpc.RpcError, grpc.aio.BaseError):
            # Production ended the call first (its status reached the client through
            # the relay, which ended the client's call): nothing left to pump.
            self._call.cancel()

    async def _pump(self) -> None:
        first: bytes | None = None
        count = 0
        while True:
            message = await self._context.read()
            if message is grpc.aio.EOF:
                break
            if len(message) > self._route.max_message_bytes:
                self.too_large = len(message)
                self._call.cancel()
                return
            count += 1
            if count == 1:
                first = message
            await self._call.write(message)
        await self._call.done_writing()
        single = first if count == 1 else None
        self.exchange = self._handler._start_copies(
            self._route, self._method, self._request_id, self._arrived, self._metadata,
            single or b"", None if single is not None else STREAMING,
        )  # fmt: skip
