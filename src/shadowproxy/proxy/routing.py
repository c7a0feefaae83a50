"""Which route a request belongs to, and which shadows get a copy of it.

Pure logic over validated config: no I/O, no clock, no aiohttp.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from shadowproxy.config import RouteConfig, ShadowConfig


@dataclass(frozen=True, slots=True)
class _Entry:
    prefix: str
    methods: frozenset[str] | None
    route: RouteConfig


class RouteTable:
    """Longest ``path_prefix`` wins; among equal prefixes a route naming the method
    beats one that takes all methods. A prefix whose methods do not include the
    request's method falls through to shorter prefixes."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        entries = [
            _Entry(
                route.match.path_prefix,
                frozenset(route.match.methods) if route.match.methods else None,
                route,
            )
            for route in routes
            if route.match.path_prefix is not None
        ]
        entries.sort(key=lambda entry: (-len(entry.prefix), entry.methods is None))
        self._entries = tuple(entries)

    def match(self, method: str, path: str) -> RouteConfig | None:
        for entry in self._entries:
            if path.startswith(entry.prefix) and (entry.methods is None or method in entry.methods):
                return entry.route
        return None


class GrpcRouteTable:
    """gRPC calls by ``/package.Service/Method``: a route naming the method beats one
    naming its service."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._routes = {route.match.grpc: route for route in routes if route.match.grpc}

    def match(self, path: str) -> RouteConfig | None:
        full = path.lstrip("/")
        return self._routes.get(full) or self._routes.get(full.partition("/")[0])


def sample_point(shadow: str, key: str | None, rng: random.Random | None = None) -> float:
    """A number in [0, 1) that decides sampling: ``point < sample_rate`` means sampled.

    With a key (e.g. a user id) the point is a hash of shadow name and key, so a user
    is always in or always out of a shadow's sample; salting with the shadow name keeps
    different shadows' samples independent. Without a key it is random per request.
    """
    if key is None:
        return (rng or random).random()
    digest = hashlib.blake2b(f"{shadow}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_sampled(shadow: ShadowConfig, key: str | None, rng: random.Random | None = None) -> bool:
    if shadow.sample_rate >= 1.0:
        return True
    if shadow.sample_rate <= 0.0:
        return False
    return sample_point(shadow.name, key, rng) < shadow.sample_rate
