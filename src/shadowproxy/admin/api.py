"""The one admin app, for a single process and for the ``serve --workers N`` supervisor.

Both modes serve the same endpoints behind the same token check; only what answers
them differs (``AdminEndpoints``): a single process answers from its own state, the
supervisor merges or passes through to its workers. The token is read on every request
from the current config, so a reload that sets, changes or removes it applies at once.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from aiohttp import web

OPEN_ADMIN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapers need no credentials; everything else does once a token is set."""

MAX_ADMIN_BODY_BYTES = 8 * 1024 * 1024
"""Feedback bodies are small JSON; a cap keeps a bad client from filling memory."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminEndpoints(Protocol):
    """What answers each admin endpoint (aiohttp handlers)."""

    async def healthz(self, request: web.Request) -> web.StreamResponse: ...
    async def readyz(self, request: web.Request) -> web.StreamResponse: ...
    async def metrics(self, request: web.Request) -> web.StreamResponse: ...
    async def routes(self, request: web.Request) -> web.StreamResponse: ...
    async def feedback(self, request: web.Request) -> web.StreamResponse: ...
    async def reload(self, request: web.Request) -> web.StreamResponse: ...
    async def experiments(self, request: web.Request) -> web.StreamResponse: ...
    async def experiment_action(self, request: web.Request) -> web.StreamResponse: ...


def admin_app(endpoints: AdminEndpoints, token: Callable[[], str | None]) -> web.Application:
    """The admin routes; ``token`` gives the bearer token in force (None: open)."""
    app = web.Application(
        client_max_size=MAX_ADMIN_BODY_BYTES, middlewares=[token_middleware(token)]
    )
    app.router.add_get("/healthz", endpoints.healthz)
    app.router.add_get("/readyz", endpoints.readyz)
    app.router.add_get("/metrics", endpoints.metrics)
    app.router.add_get("/routes", endpoints.routes)
    app.router.add_post("/feedback", endpoints.feedback)
    app.router.add_post("/reload", endpoints.reload)
    app.router.add_get("/experiments", endpoints.experiments)
    app.router.add_post("/experiments/{route}/{action}", endpoints.experiment_action)
    return app


def token_middleware(token: Callable[[], str | None]) -> Any:
    """Bearer token (scheme case-insensitive, RFC 9110 §11.1) on all but the probes."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = token()
        if expected is None or request.path in OPEN_ADMIN_PATHS:
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            return json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="shadowproxy"'},
            )
        return await handler(request)

    return require_token


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def bind(runner: web.AppRunner, listen: str, backlog: int = 1024) -> tuple[str, int]:
    """Start ``runner`` on ``listen`` (``host:port``; port 0 picks one) and return the
    address it got."""
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), backlog=backlog, reuse_address=True)
    await site.start()
    address = runner.addresses[-1]
    return str(address[0]), int(address[1])
