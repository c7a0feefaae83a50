"""The admin endpoints of a single serving process (``serve``, or one worker of
``serve --workers N``), answered from its own state."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shadowproxy.admin.api import MAX_ADMIN_BODY_BYTES, json_response
from shadowproxy.admin.documents import experiments_document, routes_document, snapshot_runners
from shadowproxy.admin.feedback import FeedbackError, FeedbackItem, parse_feedback
from shadowproxy.experiments.canary import OPERATOR_ACTIONS, CanaryActionError
from shadowproxy.proxy.runtime import Snapshot
from shadowproxy.proxy.tee import ShadowRunner


class FeedbackSink(Protocol):
    def submit_feedback(self, items: Sequence[FeedbackItem]) -> bool:
        """Accept all items or none; False when the buffer is full."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """How a reload went; ``error`` reads ``file: field: message`` for a bad config."""

    ok: bool
    routes: int = 0
    error: str | None = None
    status: int = 200
    """What ``POST /reload`` answers: 422 for a rejected config, 503 when not serving."""


@dataclass(slots=True)
class LocalAdmin:
    """``AdminEndpoints`` over one process's snapshot, sink and registry."""

    snapshot: Callable[[], Snapshot]
    ready: Callable[[], bool]
    recorder_health: Callable[[], dict[str, object]]
    registry: CollectorRegistry
    feedback_sink: FeedbackSink | None
    auto_choices: Callable[[], dict[str, dict[str, int]]] | None
    do_reload: Callable[[], Awaitable[ReloadResult]]
    grpc_runners: Callable[[], dict[str, list[ShadowRunner]]] = dict
    """The gRPC routes' shadow runners (their listener keeps its own snapshot)."""

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        # A degraded recorder does not make the proxy unready: taking the pod out of
        # service would stop production traffic over a logging problem.
        recorder = self.recorder_health()
        status = "ok" if recorder.get("status") == "ok" else "degraded"
        ready = self.ready()
        body = {"status": status if ready else "starting", "recorder": recorder}
        return json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def routes(self, request: web.Request) -> web.StreamResponse:
        choices = self.auto_choices() if self.auto_choices is not None else {}
        snapshot = self.snapshot()
        runners = {**snapshot_runners(snapshot), **self.grpc_runners()}
        return json_response(routes_document(snapshot.config, runners, choices))

    async def feedback(self, request: web.Request) -> web.StreamResponse:
        """Ground-truth labels by request id, recorded next to the pairs."""
        if self.feedback_sink is None:
            return json_response({"error": "recording is not enabled"}, status=404)
        try:
            items = parse_feedback(await request.read(), time.time())
        except FeedbackError as exc:
            return json_response({"error": str(exc)}, status=400)
        except web.HTTPRequestEntityTooLarge:
            return json_response({"error": f"body over {MAX_ADMIN_BODY_BYTES} bytes"}, status=413)
        if not self.feedback_sink.submit_feedback(items):
            return json_response({"error": "recorder buffer full; retry later"}, status=503)
        return json_response({"accepted": len(items)}, status=202)

    async def reload(self, request: web.Request) -> web.StreamResponse:
        result = await self.do_reload()
        if result.ok:
            return json_response({"result": "success", "routes": result.routes})
        return json_response({"result": "failure", "error": result.error}, status=result.status)

    async def experiments(self, request: web.Request) -> web.StreamResponse:
        return json_response(experiments_document(self.snapshot()))

    async def experiment_action(self, request: web.Request) -> web.StreamResponse:
        """``POST /experiments/<route>/<action>``: pause, resume, promote, rollback, reset."""
        route, action = request.match_info["route"], request.match_info["action"]
        controller = self.snapshot().canaries.get(route)
        if controller is None:
            return json_response({"error": f"no canary route named {route!r}"}, status=404)
        if action not in OPERATOR_ACTIONS:
            known = ", ".join(OPERATOR_ACTIONS)
            return json_response(
                {"error": f"unknown action {action!r}; one of: {known}"}, status=404
            )
        by = request.headers.get("X-Operator") or f"admin@{request.remote}"
        try:
            decision = controller.act(action, by=by, note=request.query.get("note"))
        except CanaryActionError as exc:
            return json_response(
                {"error": str(exc), "status": controller.canary.status}, status=409
            )
        return json_response({"decision": decision.to_dict(), "experiment": controller.document()})
