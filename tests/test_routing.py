from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.config import RouteConfig, ShadowConfig
from shadowproxy.proxy.routing import RouteTable, is_sampled, sample_point


def make_route(name: str, prefix: str, methods: list[str] | None = None) -> RouteConfig:
    return RouteConfig.model_validate(
        {
            "name": name,
            "match": {"path_prefix": prefix, "methods": methods},
            "production": {"url": "http://h:1"},
        }
    )


TABLE = RouteTable(
    [
        make_route("root", "/"),
        make_route("models", "/v1/models"),
        make_route("price-post", "/v1/models/price", ["POST"]),
        make_route("price-any", "/v1/models/price"),
        make_route("price-get", "/v1/models/price", ["GET"]),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/models/price:predict", "price-post"),
        ("GET", "/v1/models/price", "price-get"),
        ("PUT", "/v1/models/price", "price-any"),
        ("POST", "/v1/models/other", "models"),
        ("GET", "/health", "root"),
    ],
)
def test_longest_prefix_then_method(method: str, path: str, expected: str) -> None:
    route = TABLE.match(method, path)
    assert route is not None and route.name == expected


def test_method_mismatch_falls_through_to_shorter_prefix() -> None:
    table = RouteTable([make_route("short", "/v1"), make_route("long", "/v1/x", ["POST"])])
    assert table.match("GET", "/v1/x").name == "short"  # type: ignore[union-attr]
    assert RouteTable([make_route("long", "/v1/x", ["POST"])]).match("GET", "/v1/x") is None


def shadow(rate: float, key: str | None = None) -> ShadowConfig:
    return ShadowConfig(name="s", url="http://h:1", sample_rate=rate, sample_key=key)


def test_sampling_extremes_and_rate() -> None:
    rng = random.Random(7)
    assert all(is_sampled(shadow(1.0), None, rng) for _ in range(100))
    assert not any(is_sampled(shadow(0.0), None, rng) for _ in range(100))
    hits = sum(is_sampled(shadow(0.3), None, rng) for _ in range(20_000))
    assert 0.28 < hits / 20_000 < 0.32


@given(st.text(min_size=1, max_size=40))
def test_sticky_sampling_is_a_pure_function_of_the_key(key: str) -> None:
    assert is_sampled(shadow(0.5, "X-User"), key) == is_sampled(shadow(0.5, "X-User"), key)
    assert 0.0 <= sample_point("s", key) < 1.0


def test_sticky_sampling_rate_and_independence_across_shadows() -> None:
    keys = [f"user-{n}" for n in range(20_000)]
    points_a = [sample_point("a", key) for key in keys]
    points_b = [sample_point("b", key) for key in keys]
    assert 0.48 < sum(p < 0.5 for p in points_a) / len(keys) < 0.52
    both = sum(a < 0.5 and b < 0.5 for a, b in zip(points_a, points_b, strict=True))
    assert 0.23 < both / len(keys) < 0.27
