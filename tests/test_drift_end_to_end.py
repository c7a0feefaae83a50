"""Known truth through the real path: model servers reporting ``model_version``, the
proxy and its recorder, Parquet, then ``shadowproxy report --config``. The input's sqft
shifts halfway and production's model changes at a known request: the report flags
exactly that feature and that release, and nothing else."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder
from tests.support import route, upstream, write_config

REQUESTS, SHIFT_AT, RELEASE_AT = 1600, 800, 1400
MONITOR = {
    "sample_rate": 1.0,
    "features": [
        {"name": "sqft", "path": "$.instances[*][1]", "kind": "numeric"},
        {"name": "rooms", "path": "$.instances[*][2]", "kind": "numeric"},
        {"name": "country", "path": "$.country", "kind": "categorical"},
    ],
    "invariants": [
        {"name": "price_non_negative", "target": "prediction", "min": 0},
        {"name": "known_country", "target": "request", "path": "$.country", "in": ["US", "DE"]},
    ],
    "jump_window": 200,
}


def model(released_from: int | None) -> Any:
    """Price from rooms and a noise field; version v2 (from request ``released_from``)
    adds 2.5."""

    async def handle(request: web.Request) -> web.StreamResponse:
        index = int(request.headers["X-Request-Id"].rsplit("-", 1)[1])
        payload = orjson.loads(await request.read())
        released = released_from is not None and index >= released_from
        prices = [10 + row[2] + row[3] + (2.5 if released else 0.0) for row in payload["instances"]]
        version = "v2" if released else "v1"
        return web.json_response({"predictions": prices, "model_version": version})

    return handle


def body(rng: random.Random, index: int) -> bytes:
    sqft = rng.gauss(140 if index >= SHIFT_AT else 100, 20)
    country = rng.choices(["US", "DE", "FR", "JP"], weights=[5, 3, 1, 1])[0]
    row = [1, sqft, rng.randint(1, 6), rng.gauss(0, 2)]
    return orjson.dumps({"instances": [row], "country": country})


@pytest.mark.timeout(180)
async def test_the_report_flags_the_shifted_feature_and_the_release_only(tmp_path: Path) -> None:
    async with upstream(model(RELEASE_AT)) as prod, upstream(model(None)) as shadow:
        shadows = [{"name": "v2", "url": shadow.url, "sample_rate": 0.5}]
        compare = {"prediction": "kserve-v1", "ignore": ["$.model_version"]}
        config_path = write_config(
            tmp_path, [route("price", prod.url, shadows, monitor=MONITOR, compare=compare)]
        )
        config = load_config(config_path)
        metrics = Metrics(CollectorRegistry())
        comparer = Comparer(config.routes)
        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
        server = Server(config, metrics, recorder, recorder, comparer.auto_choices)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            url = f"http://{host}:{port}/v1/models/price"
            rng = random.Random(5)
            async with aiohttp.ClientSession() as session:
                for index in range(REQUESTS):  # in order: the release is at a known request
                    headers = {"X-Request-Id": f"req-{index:05d}"}
                    async with session.post(url, data=body(rng, index), headers=headers) as r:
                        assert r.status == 200
        finally:
            await server.stop()

    out = tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "shadowproxy", "report", str(tmp_path / "shadow-logs"),
        "--config", str(config_path), "--json", str(out), "--out", str(tmp_path / "r.html"),
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())["drift"]["price"]
    assert [(f["name"], f["flagged"]) for f in summary["features"]] == [
        ("sqft", True),
        ("rooms", False),
        ("country", False),
    ]
    assert summary["features"][0]["test"]["name"] == "kolmogorov-smirnov"
    assert summary["features"][2]["test"]["name"] == "chi-square homogeneity"
    assert summary["prediction"]["flagged"] is False
    [jump] = summary["jumps"]
    assert (jump["from_version"], jump["to_version"], jump["flagged"]) == ("v1", "v2", True)
    by_rule = {(i["name"], i["role"]): i for i in summary["invariants"]}
    assert by_rule["known_country", "request"]["n"] == REQUESTS
    assert "Drift price: flagged sqft" in done.stdout
    assert "release v1 -> v2" in done.stdout and "JUMP" in done.stdout
    html = (tmp_path / "r.html").read_text()
    assert '<section id="drift">' in html


async def test_without_config_the_report_says_why_there_is_no_drift(tmp_path: Path) -> None:
    async with upstream(model(None)) as prod:
        shadows = [{"name": "v2", "url": prod.url}]
        config = load_config(write_config(tmp_path, [route("price", prod.url, shadows)]))
        metrics = Metrics(CollectorRegistry())
        recorder = Recorder(config.main.recording, config.routes, metrics, Comparer(config.routes))
        server = Server(config, metrics, recorder)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            async with aiohttp.ClientSession() as session:
                headers = {"X-Request-Id": "req-00001"}
                data = orjson.dumps({"instances": [[1, 2, 3, 4]]})
                async with session.post(
                    f"http://{host}:{port}/v1/models/price", data=data, headers=headers
                ) as r:
                    assert r.status == 200
        finally:
            await server.stop()
    out = tmp_path / "summary.json"
    command = [
        sys.executable,
        "-m",
        "shadowproxy",
        "report",
        str(tmp_path / "shadow-logs"),
        "--json",
        str(out),
    ]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["drift"] is None
    assert "No --config given" in done.stdout
