"""The gRPC listener: HTTP/2 (cleartext or TLS), generic handlers, the health service.

No service is registered: one generic handler takes every method by its path
(``/package.Service/Method``) and hands the raw message bytes to the ``Calls`` it was
given (``shadowproxy.proxy.grpc_handler``), so the proxy needs no code generated for the
services it passes through. ``Calls.kind`` says whether a method is served as a unary
call (one message each way, the fast path) or as a stream (any shape).

Bounds: ``max_concurrent_calls`` in flight over all connections (more are refused with
``RESOURCE_EXHAUSTED`` and counted), ``max_concurrent_streams`` per HTTP/2 connection
(the client queues more), and ``max_message_bytes`` per message, the largest any route
allows (each route checks its own). Bytes that are not gRPC (garbage, HTTP/1.1) are
refused by gRPC's core before any Python code runs: the connection is closed and
nothing is counted, because nothing reaches this process's code.

``grpc.health.v1.Health`` answers ``SERVING`` until ``set_serving(False)`` (drain),
then ``NOT_SERVING``; ``Watch`` streams each change.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Literal, Protocol

import grpc

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3

Kind = Literal["unary", "stream"]
HANDLER_CACHE_SIZE = 4096
"""Method handlers kept by method path, so a call does not build its own. Paths come
from clients, so the cache is bounded: past it, a handler is built for each call (as
fast as before, only not reused)."""


class Calls(Protocol):
    """What serves the calls: the proxy's gRPC handler."""

    def kind(self, method: str) -> Kind: ...

    def knows_service(self, service: str) -> bool:
        """Whether a route serves ``service`` (health checks of one service)."""

    async def unary(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes: ...

    async def stream(self, method: str, context: grpc.aio.ServicerContext) -> None: ...


def health_response(status: int) -> bytes:
    """``HealthCheckResponse{status}``: field 1, varint (the enum fits one byte)."""
    return bytes((0x08, status))


def health_service(request: bytes) -> str | None:
    """``HealthCheckRequest.service`` (field 1, a string), or None when malformed."""
    if not request:
        return ""
    if request[0] != 0x0A or len(request) < 2 or request[1] >= 0x80:
        return None  # service names over 127 bytes are not worth a varint reader
    size = request[1]
    if len(request) != 2 + size:
        return None
    try:
        return request[2:].decode()
    except UnicodeDecodeError:
        return None


class GrpcServer:
    """One ``grpc.aio`` server; ``listen`` binds it, ``close`` drains it."""

    def __init__(
        self,
        calls: Calls,
        *,
        max_concurrent_calls: int,
        max_concurrent_streams: int,
        max_message_bytes: int,
        on_reject: Callable[[str], None],
    ) -> None:
        self.calls = calls
        self.max_message_bytes = max_message_bytes
        self._max_calls = max_concurrent_calls
        self._on_reject = on_reject
        self.active = 0
        self._serving = True
        self._changed = asyncio.Event()
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_concurrent_streams", max_concurrent_streams),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._server.add_generic_rpc_handlers((_Generic(self),))

    async def listen(self, address: str, tls: tuple[bytes, bytes] | None = None) -> tuple[str, int]:
        """Bind ``host:port`` (``tls``: key and certificate chain, PEM) and start."""
        if tls is None:
            port = self._server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials([tls])
            port = self._server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address} (gRPC)")
        await self._server.start()
        return address.rpartition(":")[0].strip("[]"), port

    def set_serving(self, serving: bool) -> None:
        self._serving = serving
        self._changed.set()
        self._changed = asyncio.Event()

    async def close(self, grace_s: float) -> None:
        """Stop taking calls; calls in flight get up to ``grace_s`` to finish."""
        self.set_serving(False)
        await self._server.stop(grace_s)

    # --- per call --------------------------------------------------------------

    def _admit(self) -> bool:
        if self.active >= self._max_calls:
            self._on_reject("grpc_max_concurrent_calls")
            return False
        return True

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"over grpc_max_concurrent_calls ({self._max_calls} calls in flight)",
        )

    async def unary(self, method: str, request: bytes, context: Any) -> bytes:
        if not self._admit():
            await self._refuse(context)
        self.active += 1
        try:
            return await self.calls.unary(method, request, context)
        finally:
            self.active -= 1

    async def stream(self, method: str, _requests: Any, context: Any) -> None:
        if not self._admit():
            await self._refuse(context)
        self.active += 1
        try:
            await self.calls.stream(method, context)
        finally:
            self.active -= 1

    def health_status(self, service: str) -> int:
        if service and not self.calls.knows_service(service):
            return SERVICE_UNKNOWN
        return SERVING if self._serving else NOT_SERVING

    async def health_check(self, request: bytes, context: Any) -> bytes:
        service = health_service(request)
        if service is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed HealthCheckRequest")
        assert service is not None
        status = self.health_status(service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return health_response(status)

    async def health_watch(self, request: bytes, context: Any) -> None:
        service = health_service(request)
        if service is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed HealthCheckRequest")
        assert service is not None
        sent = None
        while True:
            status = self.health_status(service)
            if status != sent:
                await context.write(health_response(status))
                sent = status
            if not self._serving:
                return  # draining: the last word is said, and a watch must not hold it up
            await self._changed.wait()


class _Generic(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every method, by path: health, or the proxy's unary or stream path. gRPC asks
    for each call; a method's handler depends on its path only, so it is made once."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._handler(method)
            # Only methods of services a route serves: paths a client makes up for
            # services nobody serves cannot fill the cache before the real ones come.
            if len(self._handlers) < HANDLER_CACHE_SIZE and self._served(method):
                self._handlers[method] = handler
        return handler

    def _served(self, method: str) -> bool:
        service = method[1:].split("/", 1)[0]
        return method in (HEALTH_CHECK, HEALTH_WATCH) or self._server.calls.knows_service(service)

    def _handler(self, method: str) -> grpc.RpcMethodHandler:
        server = self._server
        if method == HEALTH_CHECK:
            return grpc.unary_unary_rpc_method_handler(server.health_check)
        if method == HEALTH_WATCH:
            return grpc.unary_stream_rpc_method_handler(server.health_watch)
        # A partial, not a wrapping coroutine: one frame less per call (gRPC still sees
        # a coroutine function through it).
        if server.calls.kind(method) == "unary":
            return grpc.unary_unary_rpc_method_handler(functools.partial(server.unary, method))
        return grpc.stream_stream_rpc_method_handler(functools.partial(server.stream, method))
