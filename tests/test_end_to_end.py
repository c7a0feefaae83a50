"""The whole path: real CLI or real server, real upstreams, real Parquet, DuckDB, report."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import orjson
import pyarrow as pa
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from tests.support import (
    black_hole,
    free_port,
    route,
    run_cli_proxy,
    upstream,
    write_config,
)

SECRET = "123-45-6789"


async def send_many(
    url: str, count: int, body: bytes, concurrency: int = 16, interval_s: float = 0.0
) -> None:
    """``count`` requests with ids ``req-00000``...; ``interval_s`` paces their starts."""
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(index: int) -> None:
            await asyncio.sleep(index * interval_s)
            async with semaphore:
                headers = {"X-Request-Id": f"req-{index:05d}", "Content-Type": "application/json"}
                async with session.post(url, data=body, headers=headers) as response:
                    assert response.status == 200
                    await response.read()

        await asyncio.gather(*(one(index) for index in range(count)))


async def test_a_thousand_requests_then_sigterm_yield_a_thousand_complete_rows(
    tmp_path: Path,
) -> None:
    async def model(request: web.Request) -> web.StreamResponse:
        payload = orjson.loads(await request.read())
        return web.json_response({"predictions": [1.5], "customer": payload["customer"]})

    async with upstream(model) as prod, upstream(model) as shadow:
        port = free_port()
        record = {"redact": ["$.customer.ssn"], "max_body_bytes": 65536}
        config = write_config(
            tmp_path,
            [route("price", prod.url, [{"name": "v2", "url": shadow.url}], record=record)],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{free_port()}",
        )
        body = orjson.dumps({"instances": [[1, 2]], "customer": {"ssn": SECRET, "id": 7}})
        url = f"http://127.0.0.1:{port}/v1/models/price:predict"
        await run_cli_proxy(config, port, lambda: send_many(url, 1000, body))

    root = tmp_path / "shadow-logs"
    table = read_dataset(str(root))
    assert table.num_rows == 1000
    assert sorted(set(table.column("request_id").to_pylist())) == [
        f"req-{n:05d}" for n in range(1000)
    ]
    schema = table.schema
    expected = {
        "request_id": pa.string(), "ts": pa.timestamp("us", tz="UTC"), "shadow": pa.string(),
        "method": pa.string(), "path": pa.string(), "query": pa.string(),
        "prod_status": pa.int32(), "prod_latency_ms": pa.float64(), "prod_error": pa.string(),
        "shadow_outcome": pa.string(), "shadow_status": pa.int32(),
        "shadow_latency_ms": pa.float64(), "shadow_error": pa.string(),
        "request_body": pa.binary(), "prod_body": pa.binary(), "shadow_body": pa.binary(),
        "request_body_truncated": pa.bool_(), "prod_body_truncated": pa.bool_(),
        "shadow_body_truncated": pa.bool_(), "prod_prediction": pa.string(),
        "shadow_prediction": pa.string(), "agree": pa.bool_(),
    }  # fmt: skip
    for name, kind in expected.items():
        assert schema.field(name).type == kind, name
    assert set(table.column("route").to_pylist()) == {"price"}
    assert set(table.column("shadow_outcome").to_pylist()) == {"ok"}
    assert set(table.column("agree").to_pylist()) == {True}
    assert all(p.parent.name.startswith("date=") for p in root.glob("pairs/route=price/*/*"))
    # The secret never reached any file, in any form.
    files = list(root.rglob("*"))
    assert files and not any(SECRET.encode() in f.read_bytes() for f in files if f.is_file())
    assert b"[redacted]" in table.column("request_body")[0].as_py()

    glob = f"{root}/pairs/**/*.parquet"
    rows = duckdb.sql(
        f"SELECT count(*), typeof(any_value(ts)), typeof(any_value(prod_status)), "
        f"count(DISTINCT route) FROM read_parquet('{glob}', hive_partitioning=true)"
    ).fetchall()[0]
    assert rows == (1000, "TIMESTAMP WITH TIME ZONE", "INTEGER", 1)


async def test_black_holed_shadow_still_yields_a_row_per_request(tmp_path: Path) -> None:
    async with upstream() as prod, black_hole() as hole:
        port = free_port()
        shadows = [
            {
                "name": "hole",
                "url": hole,
                "timeout_s": 0.5,
                "max_in_flight": 1000,
                "circuit_breaker": {"failures": 20, "backoff_s": 60},
            }
        ]
        config = write_config(
            tmp_path,
            [route("m", prod.url, shadows)],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{free_port()}",
        )
        url = f"http://127.0.0.1:{port}/v1/models/m:predict"
        # 1.5 s of traffic: the first copies time out (0.5 s) while requests still
        # arrive, so the breaker opens and the rest are skipped.
        await run_cli_proxy(config, port, lambda: send_many(url, 300, b"{}", interval_s=0.005))
    table = read_dataset(str(tmp_path / "shadow-logs"))
    assert table.num_rows == 300
    outcomes = table.column("shadow_outcome").to_pylist()
    assert set(outcomes) <= {"timeout", "skipped"}
    assert outcomes.count("timeout") >= 20 and outcomes.count("skipped") >= 1
    skipped = [
        error
        for error, outcome in zip(table.column("shadow_error").to_pylist(), outcomes, strict=True)
        if outcome == "skipped"
    ]
    assert set(skipped) == {"circuit_open"}


# --- comparison against real servers in three serving protocols ---------------------


def kserve(request_index: int, wrong: bool) -> dict[str, Any]:
    return {"predictions": [request_index % 3 + (1 if wrong else 0)]}


def open_inference(request_index: int, wrong: bool) -> dict[str, Any]:
    scores = [0.1, 0.2, 0.7] if not wrong else [0.7, 0.2, 0.1]
    return {
        "model_name": "m",
        "id": f"id-{request_index}",
        "outputs": [{"name": "probs", "shape": [1, 3], "datatype": "FP32", "data": scores}],
    }


def openai_chat(request_index: int, wrong: bool) -> dict[str, Any]:
    text = "The capital of France is Paris." if not wrong else "I do not know, sorry."
    return {
        "id": f"chatcmpl-{request_index}",
        "created": request_index,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }


PROTOCOLS = {
    "kserve": (kserve, {"prediction": "kserve-v1", "kind": "label"}),
    "v2": (open_inference, {"prediction": "open-inference", "output": "probs",
                            "kind": "probabilities"}),
    "chat": (openai_chat, {"prediction": "openai-chat", "kind": "text"}),
}  # fmt: skip


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_agreement_equals_the_programmed_disagreement(tmp_path: Path, protocol: str) -> None:
    answer, compare = PROTOCOLS[protocol]

    def server(shadow: bool) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            index = int(request.headers["X-Request-Id"].rsplit("-", 1)[1])
            # The shadow disagrees on exactly every 7th request: 29 of 200.
            return web.json_response(answer(index, shadow and index % 7 == 0))

        return handle

    async with upstream(server(False)) as prod, upstream(server(True)) as shadow:
        config_path = write_config(
            tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}], compare=compare)]
        )
        config = load_config(config_path)
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        comparer = Comparer(config.routes)
        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
        server_ = Server(config, metrics, recorder, recorder, comparer.auto_choices)
        await server_.start()
        try:
            host, port = server_.proxy_address  # type: ignore[misc]
            await send_many(f"http://{host}:{port}/v1/models/m:predict", 200, b"{}")
            admin_host, admin_port = server_.admin_address  # type: ignore[misc]
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{admin_host}:{admin_port}/routes") as resp:
                    routes = await resp.json()
        finally:
            await server_.stop()

    table = read_dataset(str(tmp_path / "shadow-logs"))
    agree = table.column("agree").to_pylist()
    ids = table.column("request_id").to_pylist()
    expected = {rid: int(rid.rsplit("-", 1)[1]) % 7 != 0 for rid in ids}
    assert len(agree) == 200
    assert dict(zip(ids, agree, strict=True)) == expected
    assert agree.count(False) == 29
    labels = {"route": "m", "shadow": "s"}
    sample = registry.get_sample_value
    assert sample("shadowproxy_comparisons_total", {**labels, "result": "agree"}) == 171
    assert sample("shadowproxy_comparisons_total", {**labels, "result": "disagree"}) == 29
    assert sample("shadowproxy_diff_score_count", labels) == 200
    assert routes["routes"][0]["compare"]["kind"] == compare["kind"]


async def test_report_after_real_traffic_and_feedback(tmp_path: Path) -> None:
    """Proxy, feedback endpoint, recorder, then ``shadowproxy report``; numbers checked
    against a direct computation over the same rows."""

    def model(shadow: bool) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            index = int(request.headers["X-Request-Id"].rsplit("-", 1)[1])
            label = index % 2 if not (shadow and index % 5 == 0) else 1 - index % 2
            return web.json_response({"predictions": [label]})

        return handle

    async with upstream(model(False)) as prod, upstream(model(True)) as shadow:
        port, admin = free_port(), free_port()
        compare = {"prediction": "kserve-v1", "kind": "label"}
        config = write_config(
            tmp_path,
            [route("m", prod.url, [{"name": "v2", "url": shadow.url}], compare=compare)],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin}",
        )

        async def traffic() -> None:
            await send_many(f"http://127.0.0.1:{port}/v1/models/m:predict", 400, b"{}")
            # Ground truth: the true label equals production's except on every 10th.
            labels = [
                {"request_id": f"req-{n:05d}", "label": n % 2 if n % 10 else 1 - n % 2}
                for n in range(400)
            ]
            async with aiohttp.ClientSession() as session:
                async with session.post(f"http://127.0.0.1:{admin}/feedback", json=labels) as r:
                    assert r.status == 202, await r.text()
                async with session.post(f"http://127.0.0.1:{admin}/feedback", data=b"[{") as r:
                    assert r.status == 400

        await run_cli_proxy(config, port, traffic)

    out, summary = tmp_path / "report.html", tmp_path / "summary.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowproxy", "report", str(tmp_path / "shadow-logs"),
        "--out", str(out), "--json", str(summary),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    printed = (await process.communicate())[0].decode()
    assert process.returncode == 0, printed
    pair = json.loads(summary.read_text())["pairs"][0]
    # Independent computation: the shadow flips every 5th answer (80 of 400);
    # truth differs from production on every 10th (40), from the shadow on
    # n % 5 == 0 xor n % 10 == 0, i.e. the 40 that are multiples of 5 but not of 10.
    assert pair["rows"] == 400
    assert pair["compared"] == 400
    assert pair["agreement_rate"] == pytest.approx(320 / 400)
    assert pair["labels"]["n"] == 400
    assert pair["labels"]["task"] == "classification"
    assert pair["labels"]["production"]["accuracy"] == pytest.approx(360 / 400)
    assert pair["labels"]["shadow"]["accuracy"] == pytest.approx(360 / 400)
    assert "v2" in printed and out.read_text().startswith("<!DOCTYPE html>")
