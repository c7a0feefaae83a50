"""The request handler: read body -> match -> tee -> forward -> stream back.

This is the production path, so it does the minimum: no JSON parsing, no
comparison, no file I/O. The shadow copies start before production is called and are
handed production's result after the client has its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from shadowproxy.errors import (
    ShadowproxyError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    describe,
)
from shadowproxy.experiments.chaos import draw
from shadowproxy.http.client import Pool, Response
from shadowproxy.http.error_json import error_answer
from shadowproxy.http.headers import (
    REQUEST_ID,
    client_response_headers,
    new_request_id,
    upstream_request_headers,
    valid_request_id,
)
from shadowproxy.http.request import Body, HttpRequest, RequestBodyError
from shadowproxy.metrics import UNMATCHED_ROUTE, Metrics
from shadowproxy.proxy.arms import Choice
from shadowproxy.proxy.runtime import ProductionChaos, RouteMetrics, RouteRuntime, Snapshot
from shadowproxy.proxy.tee import Exchange, Tee
from shadowproxy.proxy.upstream import header, header_list
from shadowproxy.records import (
    CLIENT_ABANDONED,
    Exposure,
    ExposureSink,
    ProductionResult,
    RequestInfo,
)

log = logging.getLogger(__name__)

# Responses up to this size with a Content-Length are read whole and sent in one
# write (fewer syscalls, simpler); larger, chunked or event-stream ones are streamed.
BUFFER_LIMIT = 1024 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
CLIENT_CLOSED = 499
"""Counted for a client that left before its answer (NGINX's convention)."""


class ProxyHandler:
    """Serves with ``snapshot``; a reload replaces it (see ``shadowproxy.proxy.runtime``)."""

    def __init__(
        self,
        snapshot: Snapshot,
        tee: Tee,
        metrics: Metrics,
        exposures: ExposureSink | None = None,
    ) -> None:
        self.snapshot = snapshot
        self._tee = tee
        self._exposures = exposures
        self._unmatched = RouteMetrics(metrics, UNMATCHED_ROUTE)

    async def __call__(self, request: HttpRequest) -> None:
        started = time.perf_counter()
        arrived = time.time()
        request_id = request.headers.get(REQUEST_ID)
        if not valid_request_id(request_id):
            request_id = new_request_id()
        assert request_id is not None
        # Read once: the request runs to its end under the config it started with.
        snapshot = self.snapshot
        route = snapshot.table.match(request.method, request.path)
        runtime = snapshot.routes[route.name] if route is not None else snapshot.default
        if runtime is None:
            _json_error(request, 404, "no route matches this request", request_id)
            self._unmatched.count(UNMATCHED_ROUTE, 404)
            return
        snapshot.in_flight += 1
        try:
            await self._proxy(request, runtime, request_id, started, arrived)
        finally:
            snapshot.in_flight -= 1
            runtime.metrics.duration.observe(time.perf_counter() - started)

    async def _proxy(
        self,
        request: HttpRequest,
        route: RouteRuntime,
        request_id: str,
        started: float,
        arrived: float,
    ) -> None:
        """Read the body, pick who answers, start the copies, answer, then settle.

        ``route`` is the matched route; ``answering`` is who answers it: the route
        itself, or an experiment arm's variant of it."""
        try:
            body, complete = await _read_body(request, route.max_body_bytes)
        except RequestBodyError as exc:
            _body_failed(request, route, request_id, exc, None)
            return
        headers = upstream_request_headers(
            request.headers.items(),
            request_id=request_id,
            client_ip=request.remote,
            scheme="http",
            host=request.headers.get("host"),
        )
        outcome = _Production(route.capture_bytes)
        choice = _assign(route, request, outcome)
        answering = route.variants[choice.arm.name] if choice and choice.arm else route
        exchange = self._start_copies(
            answering, request, request_id, arrived, headers, body, complete
        )
        data = body if complete else _chain(body, request.body)
        try:
            if answering.chaos is None or await _inject(
                answering.chaos, request, answering, request_id, outcome
            ):
                await self._forward(request, answering, request_id, headers, data, outcome)
        finally:
            result = outcome.result(started)
            answering.metrics.upstream.observe(result.latency_ms / 1000.0)
            if exchange is not None:
                exchange.finish(result)
            if choice is not None:
                self._settle_experiment(route, choice, request, request_id, arrived, result)

    def _start_copies(
        self,
        answering: RouteRuntime,
        request: HttpRequest,
        request_id: str,
        arrived: float,
        headers: list[tuple[str, str]],
        body: bytes,
        complete: bool,
    ) -> Exchange | None:
        """Send the copies before production is called; they get its result later."""
        if not answering.shadows:
            return None
        path, _, query = request.target.partition("?")
        info = RequestInfo(
            request_id=request_id,
            ts=arrived,
            route=answering.name,
            method=request.method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            body_complete=complete,
            content_encoding=header_list(headers, "content-encoding"),
        )
        return self._tee.start(answering.shadows, info, headers, request.target, request.headers)

    def _settle_experiment(
        self,
        route: RouteRuntime,
        choice: Choice,
        request: HttpRequest,
        request_id: str,
        arrived: float,
        result: ProductionResult,
    ) -> None:
        """Tell the assigner how the arm did and record the exposure."""
        assert route.assigner is not None
        # The answering upstream's status; None when it did not answer (502/504).
        # A client whose own body failed says nothing about the upstream.
        if request.body.error is None:
            route.assigner.observe(choice, result.status, result.latency_ms)
        if self._exposures is not None:
            self._exposures.submit_exposure(
                Exposure(
                    request_id=request_id,
                    ts=arrived,
                    route=route.name,
                    arm=choice.name,
                    unit=choice.unit,
                    status=result.status,
                    latency_ms=result.latency_ms,
                    error=result.error,
                    chaos=result.chaos,
                    share=choice.share,
                )
            )

    async def _forward(
        self,
        request: HttpRequest,
        runtime: RouteRuntime,
        request_id: str,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes],
        outcome: _Production,
    ) -> None:
        try:
            upstream = await _open(
                runtime.pool, request.method, request.target, headers, data, runtime.timeout_s
            )
        except UpstreamError as exc:
            if request.body.error is not None:
                # Production failed because the client's body did: not production's fault.
                _body_failed(request, runtime, request_id, request.body.error, outcome)
                return
            outcome.error = str(exc)
            runtime.metrics.count(runtime.name, exc.status)
            _json_error(request, exc.status, str(exc), request_id)
            return
        outcome.status = upstream.status
        outcome.content_type = header(upstream.headers, "content-type")
        outcome.content_encoding = header_list(upstream.headers, "content-encoding")
        reply_headers = client_response_headers(upstream.headers, request_id)
        if outcome.arm_header is not None:
            reply_headers.append(outcome.arm_header)
        length = upstream.content_length
        streamed = (
            request.method != "HEAD"
            and upstream.status not in _NO_BODY_STATUSES
            and (
                length is None
                or length > BUFFER_LIMIT
                or (outcome.content_type or "").startswith("text/event-stream")
            )
        )
        if streamed:
            await _stream(request, upstream, reply_headers, length, outcome, runtime)
        else:
            await _buffered(request, upstream, reply_headers, outcome, runtime, request_id)


def _assign(route: RouteRuntime, request: HttpRequest, outcome: _Production) -> Choice | None:
    """The experiment arm for this request, chosen before the tee: the arm that answers
    decides which copies are sent. None on routes without an experiment."""
    if route.assigner is None:
        return None
    choice = route.assigner.choose(request.headers)
    outcome.arm_header = (route.assigner.header, choice.name)
    return choice


class _Production:
    """Production's result, filled in as the answer goes through."""

    __slots__ = (
        "arm_header",
        "cap",
        "captured",
        "chaos",
        "content_encoding",
        "content_type",
        "error",
        "size",
        "status",
    )

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.status: int | None = None
        self.error: str | None = None
        self.content_type: str | None = None
        self.content_encoding: str | None = None
        self.captured: list[bytes] = []
        self.size = 0
        self.chaos: str | None = None
        self.arm_header: tuple[str, str] | None = None

    def capture(self, chunk: bytes) -> None:
        room = self.cap - self.size
        if room > 0:
            self.captured.append(chunk if len(chunk) <= room else chunk[:room])
        self.size += len(chunk)

    def result(self, started: float) -> ProductionResult:
        latency = (time.perf_counter() - started) * 1000.0
        body = self.captured[0] if len(self.captured) == 1 else b"".join(self.captured)
        return ProductionResult(
            status=self.status,
            latency_ms=latency,
            error=self.error,
            body=body,
            body_truncated=self.size > self.cap,
            content_type=self.content_type,
            chaos=self.chaos,
            content_encoding=self.content_encoding,
        )


async def _inject(
    chaos: ProductionChaos,
    request: HttpRequest,
    runtime: RouteRuntime,
    request_id: str,
    outcome: _Production,
) -> bool:
    """Production's faults for this request: True to go on and forward (after any
    delay), False when an injected error was answered in production's place."""
    injection = draw(chaos.rules, chaos.rng)
    if injection is None:
        return True
    for fault in injection.faults:
        chaos.injected[fault].inc()
    outcome.chaos = injection.marker
    if injection.abort_status is None:
        await asyncio.sleep(injection.delay_s)
        return True
    status = injection.abort_status
    outcome.status, outcome.content_type = status, "application/json"
    message = f"injected by chaos ({outcome.chaos})"
    outcome.capture(_json_error(request, status, message, request_id))
    runtime.metrics.count(runtime.name, status)
    return False


async def _read_body(request: HttpRequest, cap: int) -> tuple[bytes, bool]:
    """Read the request body once, up to ``cap``; ``(head, complete)``.

    A body over the cap is not buffered: ``head`` holds what was read and the caller
    streams the rest to production (the request's shadows are skipped).
    """
    declared = request.content_length
    if declared is not None and declared > cap:
        return b"", False
    body = request.body
    first = await body.read_chunk()
    if not first:
        return b"", True
    chunks = [first]
    size = len(first)
    while size <= cap:
        chunk = await body.read_chunk()
        if not chunk:
            return first if len(chunks) == 1 else b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


async def _chain(head: bytes, rest: Body) -> AsyncIterator[bytes]:
    """A request body already partly read: what was read, then the rest as it arrives."""
    if head:
        yield head
    while chunk := await rest.read_chunk():
        yield chunk


async def _open(
    pool: Pool,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    data: bytes | AsyncIterator[bytes],
    timeout_s: float,
) -> Response:
    """Send the request and wait for response headers, within the route's timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            return await pool.request(method, target, headers, data or None)
    except TimeoutError:
        raise UpstreamTimeout(f"production did not answer within {timeout_s:g}s") from None
    except (ShadowproxyError, OSError, ValueError) as exc:
        raise UpstreamUnavailable(f"production unreachable: {describe(exc)}") from None


async def _buffered(
    request: HttpRequest,
    upstream: Response,
    headers: list[tuple[str, str]],
    outcome: _Production,
    runtime: RouteRuntime,
    request_id: str,
) -> None:
    try:
        async with asyncio.timeout(runtime.timeout_s):
            payload = await upstream.read()
    except TimeoutError:
        upstream.close()
        outcome.error = "production body timed out"
        runtime.metrics.count(runtime.name, 504)
        _json_error(request, 504, outcome.error, request_id)
        return
    except (ShadowproxyError, OSError) as exc:
        upstream.close()
        outcome.error = f"production body failed: {describe(exc)}"
        runtime.metrics.count(runtime.name, 502)
        _json_error(request, 502, outcome.error, request_id)
        return
    upstream.release()
    outcome.capture(payload)
    if request.disconnected:
        outcome.error = "client disconnected"
        runtime.metrics.count(runtime.name, CLIENT_CLOSED)
        request.abort()
        return
    runtime.metrics.count(runtime.name, upstream.status)
    # To a HEAD the headers describe the GET answer: keep its Content-Length.
    length = upstream.content_length if request.method == "HEAD" else None
    request.reply(upstream.status, upstream.reason, headers, payload, content_length=length)


async def _stream(
    request: HttpRequest,
    upstream: Response,
    headers: list[tuple[str, str]],
    length: int | None,
    outcome: _Production,
    runtime: RouteRuntime,
) -> None:
    """Pass a body through as it arrives: the client sees the first event at once.

    Each read waits at most the route's ``timeout_s``: a stalled stream is cut, not
    left holding the client's connection. A client that leaves mid-stream is counted
    as 499 and production's stream closed rather than read on: an LLM server would
    go on generating tokens nobody reads (``records.CLIENT_ABANDONED``).
    """
    chunks = upstream.iter_chunks()
    code = upstream.status
    try:
        request.start(upstream.status, upstream.reason, headers, length)
        while True:
            async with asyncio.timeout(runtime.timeout_s):
                chunk = await anext(chunks, b"")
            if not chunk:
                break
            outcome.capture(chunk)
            await request.write(chunk)
        request.end()
    except ConnectionError:
        outcome.error, code = CLIENT_ABANDONED, CLIENT_CLOSED
        upstream.close()
    except (ShadowproxyError, OSError, TimeoutError) as exc:
        # Headers are out: the only honest signal left is to cut the connection so
        # the client sees an incomplete body rather than a clean end.
        outcome.error = f"production stream failed: {describe(exc)}"
        upstream.close()
        request.abort()
    else:
        upstream.release()
    finally:
        runtime.metrics.count(runtime.name, code)


def _body_failed(
    request: HttpRequest,
    runtime: RouteRuntime,
    request_id: str,
    error: RequestBodyError,
    outcome: _Production | None,
) -> None:
    """The client's body failed: it left (counted as 499, as NGINX logs it, nobody is
    there to answer), stalled (408) or sent broken framing (400)."""
    if request.disconnected:
        message, status = "client disconnected", CLIENT_CLOSED
    else:
        message, status = f"request body unreadable: {error}", error.status
    if outcome is not None:
        outcome.error = message
    runtime.metrics.count(runtime.name, status)
    if not request.disconnected:
        _json_error(request, status, message, request_id)
    else:
        request.abort()


def _json_error(request: HttpRequest, status: int, message: str, request_id: str) -> bytes:
    reason, headers, body = error_answer(status, message, request_id)
    request.reply(status, reason, headers, body)
    return body
