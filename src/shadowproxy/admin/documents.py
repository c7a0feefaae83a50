"""What ``/routes`` and ``/experiments`` show, built from a snapshot: active routes, how
each compares, each shadow's state, experiment arms. Credentials in URLs never show."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shadowproxy.compare import describe
from shadowproxy.config import Config, RouteConfig
from shadowproxy.proxy.runtime import Snapshot
from shadowproxy.proxy.tee import ShadowRunner


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
    main = config.main
    return {
        "config": config.source,
        "default_upstream": redact_url(main.default_upstream) if main.default_upstream else None,
        "routes": [
            _route_entry(route, source, runners.get(route.name, []), auto_choices)
            for route, source in zip(config.routes, config.route_sources, strict=True)
        ],
    }


def snapshot_runners(snapshot: Snapshot) -> dict[str, list[ShadowRunner]]:
    """Each route's shadow runners, a canary's disagreement check included."""
    return {
        name: [*runtime.shadows, *([runtime.check] if runtime.check is not None else [])]
        for name, runtime in snapshot.routes.items()
    }


def experiments_document(snapshot: Snapshot) -> dict[str, Any]:
    """Canary state and decisions; A/B arms and weights."""
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
    return {"experiments": documents}


def _shadow_entry(runner: ShadowRunner) -> dict[str, Any]:
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


def _route_entry(
    route: RouteConfig,
    source: str,
    runners: list[ShadowRunner],
    auto_choices: dict[str, dict[str, int]],
) -> dict[str, Any]:
    return {
        "name": route.name,
        "source": source,
        "match": (
            {"grpc": route.match.grpc}
            if route.match.grpc is not None
            else {"path_prefix": route.match.path_prefix, "methods": route.match.methods}
        ),
        "production": {
            "url": redact_url(route.production.url),
            "timeout_s": route.production.timeout_s,
        },
        "max_body_bytes": route.max_body_bytes,
        "record": route.record.model_dump(mode="json"),
        "compare": {**describe(route.compare), "auto_picked": auto_choices.get(route.name, {})},
        "shadows": [_shadow_entry(runner) for runner in runners],
        "chaos": [rule.model_dump(mode="json", exclude_defaults=True) for rule in route.chaos],
    }
