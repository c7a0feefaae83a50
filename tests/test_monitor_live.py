"""The monitor at work through a real proxy: real model servers on loopback, the real
recorder, Parquet read back, metrics read from the registry. Violations are counted
exactly for each rule type, live and on the rows; watched requests without a shadow
land in ``telemetry/``; categories stay bounded whatever the traffic sends."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from shadowproxy.recording.storage import read_telemetry
from tests.support import route, upstream, write_config

MONITOR = {
    "sample_rate": 1.0,
    "features": [
        {"name": "sqft", "path": "$.instances[*][1]", "kind": "numeric"},
        {"name": "country", "path": "$.country", "kind": "categorical", "max_categories": 3},
    ],
    "invariants": [
        {"name": "price_non_negative", "target": "prediction", "min": 0},
        {"name": "four_features", "target": "request", "path": "$.instances[*]", "length": 4},
        {"name": "known_country", "target": "request", "path": "$.country", "in": ["US", "DE"]},
        {"name": "weights_sum", "target": "request", "path": "$.weights", "sum": 1.0},
    ],
}


async def model(request: web.Request) -> web.StreamResponse:
    """A price per instance: negative when the first feature is (a broken model)."""
    payload = orjson.loads(await request.read())
    prices = [-1.0 if row[0] < 0 else 100.0 + row[1] for row in payload["instances"]]
    return web.json_response({"predictions": prices, "model_version": "v1"})


def request_body(i: int) -> dict[str, Any]:
    row = [-1 if i % 5 == 0 else 1, 50 + i, 0] + ([] if i % 4 == 0 else [0])
    return {
        "instances": [row],
        "country": "XX" if i % 3 == 0 else "US",
        "weights": [0.5, 0.6] if i % 7 == 0 else [0.5, 0.5],
    }


async def run(tmp_path: Path, bodies: list[tuple[str, dict[str, Any]]], monitor: Any) -> Any:
    """Serve ``bodies`` (method, JSON) through a proxy with the real recorder."""
    async with upstream(model) as prod, upstream(model) as shadow:
        shadows = [{"name": "v2", "url": shadow.url, "methods": ["PUT"]}]
        config = load_config(
            write_config(
                tmp_path,
                [
                    route(
                        "price",
                        prod.url,
                        shadows,
                        monitor=monitor,
                        compare={"prediction": "kserve-v1"},
                    )
                ],
            )
        )
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        comparer = Comparer(config.routes)
        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
        server = Server(config, metrics, recorder, recorder, comparer.auto_choices)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            url = f"http://{host}:{port}/v1/models/price"
            async with aiohttp.ClientSession() as session:
                for index, (method, body) in enumerate(bodies):
                    headers = {"X-Request-Id": f"req-{index:03d}"}
                    async with session.request(method, url, json=body, headers=headers) as r:
                        assert r.status == 200
        finally:
            await server.stop()
    return registry, recorder


async def test_violations_are_counted_exactly_live_and_on_the_rows(tmp_path: Path) -> None:
    # Even requests (POST) have no shadow: telemetry rows; odd ones (PUT) make pairs.
    bodies = [("PUT" if i % 2 else "POST", request_body(i)) for i in range(20)]
    registry, _ = await run(tmp_path, bodies, MONITOR)

    def live(role: str, invariant: str) -> float:
        labels = {"route": "price", "role": role, "invariant": invariant}
        return registry.get_sample_value("shadowproxy_invariant_violations_total", labels) or 0

    assert live("request", "four_features") == 5  # i % 4 == 0
    assert live("request", "known_country") == 7  # i % 3 == 0
    assert live("request", "weights_sum") == 3  # i % 7 == 0
    assert live("production", "price_non_negative") == 4  # i % 5 == 0
    assert live("v2", "price_non_negative") == 2  # odd and i % 5 == 0: 5, 15
    monitored = "shadowproxy_monitored_total"
    assert registry.get_sample_value(monitored, {"route": "price", "role": "production"}) == 20
    assert registry.get_sample_value(monitored, {"route": "price", "role": "v2"}) == 10
    count = registry.get_sample_value(
        "shadowproxy_prediction_value_count", {"route": "price", "role": "production"}
    )
    assert count == 20

    root = str(tmp_path / "shadow-logs")
    telemetry, pairs = read_telemetry(root).to_pylist(), read_dataset(root).to_pylist()
    assert sorted(row["request_id"] for row in telemetry) == [
        f"req-{i:03d}" for i in range(0, 20, 2)
    ]
    assert sorted(row["request_id"] for row in pairs) == [f"req-{i:03d}" for i in range(1, 20, 2)]
    recorded: Counter[tuple[str, str]] = Counter()
    for row in telemetry:
        recorded.update(("production", name) for name in row["violations"])
        recorded.update(("request", name) for name in row["request_violations"])
        assert row["model_version"] == "v1"
    for row in pairs:
        recorded.update(("production", name) for name in row["prod_violations"])
        recorded.update(("v2", name) for name in row["shadow_violations"])
        recorded.update(("request", name) for name in row["request_violations"])
    assert recorded == {
        ("request", "four_features"): 5,
        ("request", "known_country"): 7,
        ("request", "weights_sum"): 3,
        ("production", "price_non_negative"): 4,
        ("v2", "price_non_negative"): 2,
    }


async def test_unwatched_requests_without_a_shadow_leave_no_row(tmp_path: Path) -> None:
    bodies = [("POST", request_body(1)), ("PUT", request_body(3))]
    registry, _ = await run(tmp_path, bodies, {**MONITOR, "sample_rate": 0.0})
    root = str(tmp_path / "shadow-logs")
    assert read_telemetry(root).num_rows == 0
    pairs = read_dataset(root).to_pylist()
    assert [row["request_violations"] for row in pairs] == [None]  # not watched
    labels = {"route": "price", "role": "request", "invariant": "known_country"}
    assert registry.get_sample_value("shadowproxy_invariant_violations_total", labels) is None


async def test_ten_thousand_categories_keep_the_series_bounded(tmp_path: Path) -> None:
    monitor = {
        "sample_rate": 1.0,
        "features": [{"name": "city", "path": "$.rows[*].city", "kind": "categorical"}],
    }
    bodies = [
        (
            "POST",
            {"instances": [[1, 1, 1, 1]], "rows": [{"city": f"c{b}-{i}"} for i in range(1000)]},
        )
        for b in range(10)
    ]
    registry, recorder = await run(tmp_path, bodies, monitor)
    series = [
        sample
        for family in registry.collect()
        if family.name == "shadowproxy_feature_category"
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
    assert len(series) == 21  # max_categories (default 20) plus other
    by_label = {s.labels["category"]: s.value for s in series}
    assert by_label["other"] == 10_000 - 20
    bound = recorder._writer._watches["price"]._categories["city"]
    assert len(bound.kept) == 20 and bound.overflowed == 9_980
    await asyncio.sleep(0)


def test_telemetry_rows_match_their_documented_schema() -> None:
    from shadowproxy.recording.schema import TELEMETRY_SCHEMA, telemetry_row
    from shadowproxy.records import Observation, ProductionResult, RequestInfo

    request = RequestInfo(
        request_id="r",
        ts=1.0,
        route="price",
        method="POST",
        path="/p",
        query="",
        headers=[],
        body=b"{}",
        body_complete=True,
    )
    production = ProductionResult(
        status=200,
        latency_ms=1.0,
        error=None,
        body=b"{}",
        body_truncated=False,
        content_type="application/json",
    )
    cells = telemetry_row(
        Observation(request, production), "[1]", ["a"], [], "v1", bodies=True, max_body_bytes=10
    )
    assert list(cells) == TELEMETRY_SCHEMA.names
    assert all(f.metadata[b"description"] for f in TELEMETRY_SCHEMA)


async def test_the_model_version_can_come_from_a_response_header(tmp_path: Path) -> None:
    async def versioned(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response({"predictions": [1.0]}, headers={"X-Model-Version": "v7"})

    monitor = {"sample_rate": 1.0, "version": {"header": "X-Model-Version"}}
    async with upstream(versioned) as prod:
        config = load_config(write_config(tmp_path, [route("price", prod.url, monitor=monitor)]))
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        recorder = Recorder(config.main.recording, config.routes, metrics, Comparer(config.routes))
        server = Server(config, metrics, recorder)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            async with aiohttp.ClientSession() as session:
                url = f"http://{host}:{port}/v1/models/price"
                async with session.post(url, json={"instances": [[1]]}) as r:
                    assert r.status == 200
        finally:
            await server.stop()
    rows = read_telemetry(str(tmp_path / "shadow-logs")).to_pylist()
    assert [row["model_version"] for row in rows] == ["v7"]
    labels = {"route": "price", "version": "v7"}
    assert registry.get_sample_value("shadowproxy_model_version_answers_total", labels) == 1


GZIP_MONITOR = {
    "sample_rate": 1.0,
    "prediction": {"kind": "numeric"},
    "invariants": [{"name": "non_negative", "target": "prediction", "min": 0}],
}


async def _gzipped(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.json_response({"predictions": [-1.0], "model_version": "v3"})
    response.enable_compression(web.ContentCoding.gzip)
    return response


async def _one_gzip_answer(tmp_path: Path, shadowed: bool) -> CollectorRegistry:
    """One request accepting gzip through a monitored route whose upstreams answer gzip;
    the client must get production's gzip bytes."""
    async with upstream(_gzipped) as prod, upstream(_gzipped) as shadow:
        shadows = [{"name": "s", "url": shadow.url}] if shadowed else []
        routes = [
            route(
                "price",
                prod.url,
                shadows,
                monitor=GZIP_MONITOR,
                compare={"prediction": "kserve-v1"},
            )
        ]
        config = load_config(write_config(tmp_path, routes))
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        recorder = Recorder(config.main.recording, config.routes, metrics, Comparer(config.routes))
        server = Server(config, metrics, recorder)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                url = f"http://{host}:{port}/v1/models/price"
                headers = {"Accept-Encoding": "gzip"}
                async with session.post(url, json={"instances": [[1]]}, headers=headers) as r:
                    assert r.status == 200
                    assert r.headers["Content-Encoding"] == "gzip"
                    assert (await r.read())[:2] == b"\x1f\x8b"
        finally:
            await server.stop()
    return registry


async def test_a_gzip_answer_is_watched_decoded(tmp_path: Path) -> None:
    """A client that accepts gzip gets production's gzip bytes; the monitor reads the
    decoded answer, as the comparison does (its prediction, version and invariants)."""
    registry = await _one_gzip_answer(tmp_path, shadowed=False)
    (row,) = read_telemetry(str(tmp_path / "shadow-logs")).to_pylist()
    assert (row["prod_content_encoding"], row["prod_body_decode_error"]) == ("gzip", None)
    assert orjson.loads(row["prod_body"]) == {"predictions": [-1.0], "model_version": "v3"}
    assert (row["prediction"], row["model_version"], row["violations"]) == (
        "[-1.0]",
        "v3",
        ["non_negative"],
    )
    labels = {"route": "price", "role": "production", "invariant": "non_negative"}
    assert registry.get_sample_value("shadowproxy_invariant_violations_total", labels) == 1


async def test_a_watched_pair_is_read_decoded(tmp_path: Path) -> None:
    """With a shadow, the watched request is a pair: the monitor reads its decoded
    answers too, not the gzip bytes the client got."""
    await _one_gzip_answer(tmp_path, shadowed=True)
    (row,) = read_dataset(str(tmp_path / "shadow-logs")).to_pylist()
    assert (row["model_version"], row["prod_violations"], row["shadow_violations"]) == (
        "v3",
        ["non_negative"],
        ["non_negative"],
    )
