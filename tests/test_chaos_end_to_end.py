"""Chaos through the real proxy: loopback upstreams, the proxy in-process or as the CLI,
the writer process, real Parquet read back with pyarrow and DuckDB, and the report."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.config import load_config
from shadowproxy.experiments.chaos import INJECTED_BODY
from shadowproxy.metrics import Metrics
from shadowproxy.recording import read_dataset
from shadowproxy.recording.process import RecorderProcess
from tests.support import (
    RunningProxy,
    free_port,
    route,
    run_cli_proxy,
    running_proxy,
    upstream,
    write_config,
)
from tests.test_end_to_end import send_many
from tests.test_reload import reload, rewrite

PREDICT = "/v1/models/m:predict"
KSERVE_LABEL = {"prediction": "kserve-v1", "kind": "label"}


def rule(shadow: str, fraction: float = 1.0, **fault: Any) -> dict[str, Any]:
    return {"target": f"shadow:{shadow}", "fraction": fraction, **fault}


async def model(request: web.Request) -> web.StreamResponse:
    """A deterministic classifier: production and every twin answer alike."""
    tail = request.headers.get("X-Request-Id", "").rsplit("-", 1)[-1]
    index = int(tail) if tail.isdigit() else 0
    return web.json_response({"predictions": [["cat", "dog", "bird"][index % 3]]})


def one_route(tmp_path: Path, prod: str, shadows: list[dict[str, Any]], **extra: Any) -> Path:
    return write_config(tmp_path, [route("m", prod, shadows, **extra)])


def injected(proxy: RunningProxy, target: str, fault: str, route_name: str = "m") -> float:
    return proxy.metric(
        "shadowproxy_chaos_injected_total", route=route_name, target=target, fault=fault
    )


def copies(proxy: RunningProxy, outcome: str) -> float:
    return proxy.metric("shadowproxy_shadow_requests_total", route="m", shadow="s", outcome=outcome)


async def test_an_abort_never_calls_the_shadow_and_production_answers_unchanged(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream(model) as prod, upstream(model) as shadow:
        shadows = [{"name": "s", "url": shadow.url}]
        config = one_route(tmp_path, prod.url, shadows, chaos=[rule("s", abort_status=503)])
        async with running_proxy(config) as proxy:
            for n in range(20):
                headers = {"X-Request-Id": f"req-{n}"}
                async with client.post(proxy.url + PREDICT, data=b"{}", headers=headers) as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"predictions": [["cat", "dog", "bird"][n % 3]]}
            pairs = await proxy.sink.wait_for(20)
            assert injected(proxy, "s", "abort") == 20
            assert copies(proxy, "ok") == 20
            # Only configured faults have series.
            labels = {"route": "m", "target": "s", "fault": "delay"}
            assert (
                proxy.registry.get_sample_value("shadowproxy_chaos_injected_total", labels) is None
            )
        assert shadow.seen == []
        assert len(prod.seen) == 20
        for pair in pairs:
            result = pair.result
            assert (result.outcome, result.status, result.latency_ms) == ("ok", 503, 0.0)
            assert (result.body, result.chaos) == (INJECTED_BODY, "abort_status=503")
            assert pair.production.status == 200 and pair.production.chaos is None


async def test_a_delay_is_part_of_the_recorded_latency(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream(model) as prod, upstream(model) as shadow:
        shadows = [{"name": "s", "url": shadow.url}]
        config = one_route(tmp_path, prod.url, shadows, chaos=[rule("s", delay_ms=150)])
        async with running_proxy(config) as proxy:
            started = time.perf_counter()
            for _ in range(5):
                async with client.post(proxy.url + PREDICT, data=b"{}") as response:
                    assert response.status == 200
            # Production does not wait for the delayed copies (5 x 150 ms if it did).
            assert time.perf_counter() - started < 0.7
            pairs = await proxy.sink.wait_for(5)
            assert injected(proxy, "s", "delay") == 5
            seconds = proxy.registry.get_sample_value(
                "shadowproxy_upstream_duration_seconds_sum",
                {"route": "m", "target": "s", "role": "shadow"},
            )
            assert seconds is not None and seconds >= 5 * 0.15
        assert len(shadow.seen) == 5
        for pair in pairs:
            assert pair.result.outcome == "ok" and pair.result.status == 200
            assert pair.result.latency_ms is not None and pair.result.latency_ms >= 150.0
            assert pair.result.chaos == "delay_ms=150"


async def test_a_delay_past_the_timeout_is_a_timeout_without_a_call(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream(model) as prod, upstream(model) as shadow:
        shadows = [{"name": "s", "url": shadow.url, "timeout_s": 0.2}]
        config = one_route(tmp_path, prod.url, shadows, chaos=[rule("s", delay_ms=2000)])
        async with running_proxy(config) as proxy:
            for _ in range(3):
                async with client.post(proxy.url + PREDICT, data=b"{}") as response:
                    assert response.status == 200
            pairs = await proxy.sink.wait_for(3)
            assert copies(proxy, "timeout") == 3
        assert shadow.seen == []
        for pair in pairs:
            result = pair.result
            assert (result.outcome, result.chaos) == ("timeout", "delay_ms=2000")
            assert result.status is None
            assert result.latency_ms == pytest.approx(200.0)
            assert result.error == "no complete answer within 0.2s (injected delay)"


async def test_production_faults_reach_the_client_marked_and_counted(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    def production(fraction: float, **fault: Any) -> list[dict[str, Any]]:
        return [{"target": "production", "fraction": fraction, "allow_production": True, **fault}]

    async with upstream(model) as prod, upstream(model) as shadow:
        shadows = [{"name": "s", "url": shadow.url}]
        config = write_config(
            tmp_path,
            [
                route("m", prod.url, shadows, chaos=production(0.05, abort_status=503)),
                route("n", prod.url, shadows, chaos=production(0.01, delay_ms=200)),
            ],
        )
        async with running_proxy(config) as proxy:
            assert injected(proxy, "production", "abort") == 0  # the series exists from the start
            # Force the draws: the fractions are capped, the test wants every request.
            handler = proxy.server._handler
            assert handler is not None
            for name in ("m", "n"):
                chaos = handler.snapshot.routes[name].chaos
                assert chaos is not None
                chaos.rng = lambda: 0.0
            headers = {"X-Request-Id": "req-7"}
            async with client.post(proxy.url + PREDICT, data=b"{}", headers=headers) as response:
                assert response.status == 503
                assert response.reason == "Service Unavailable"
                assert await response.json() == {
                    "error": "injected by chaos (abort_status=503)",
                    "status": 503,
                    "request_id": "req-7",
                }
            assert prod.seen == []
            started = time.perf_counter()
            async with client.post(proxy.url + "/v1/models/n:predict", data=b"{}") as response:
                assert response.status == 200
            assert time.perf_counter() - started >= 0.2
            pairs = await proxy.sink.wait_for(2)
            assert proxy.metric("shadowproxy_requests_total", route="m", code="503") == 1
            assert injected(proxy, "production", "abort") == 1
            assert injected(proxy, "production", "delay", "n") == 1
        aborted, delayed = sorted(pairs, key=lambda p: p.request.route)
        assert (aborted.production.status, aborted.production.chaos) == (503, "abort_status=503")
        assert orjson.loads(aborted.production.body)["error"].startswith("injected by chaos")
        assert aborted.result.status == 200 and aborted.result.chaos is None  # the copy went out
        assert delayed.production.chaos == "delay_ms=200"
        assert delayed.production.latency_ms >= 200.0
        assert len(prod.seen) == 1 and len(shadow.seen) == 2


async def test_a_reload_that_changes_the_rules_applies_to_new_requests(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream(model) as prod, upstream(model) as shadow:
        shadows = [{"name": "s", "url": shadow.url}]
        config = one_route(tmp_path, prod.url, shadows)
        async with running_proxy(config) as proxy:

            async def traffic(count: int) -> None:
                for _ in range(count):
                    async with client.post(proxy.url + PREDICT, data=b"{}") as response:
                        assert response.status == 200

            await traffic(3)
            await proxy.sink.wait_for(3)
            rewrite(tmp_path, [route("m", prod.url, shadows, chaos=[rule("s", abort_status=500)])])
            assert (await reload(client, proxy.admin_url))[0] == 200
            await traffic(3)
            await proxy.sink.wait_for(6)
            assert len(shadow.seen) == 3
            async with client.get(proxy.admin_url + "/routes") as response:
                routes = await response.json()
            assert routes["routes"][0]["chaos"] == [
                {"target": "shadow:s", "fraction": 1.0, "abort_status": 500}
            ]
            rewrite(tmp_path, [route("m", prod.url, shadows)])
            assert (await reload(client, proxy.admin_url))[0] == 200
            await traffic(3)
            pairs = await proxy.sink.wait_for(9)
            assert len(shadow.seen) == 6
            assert injected(proxy, "s", "abort") == 3
        assert [p.result.chaos for p in pairs] == [None] * 3 + ["abort_status=500"] * 3 + [None] * 3


async def test_corrupted_rows_disagree_through_the_writer_process(tmp_path: Path) -> None:
    """Three identical shadows: one corrupted, one aborted, one left alone."""
    async with (
        upstream(model) as prod,
        upstream(model) as a,
        upstream(model) as b,
        upstream(model) as c,
    ):
        shadows = [
            {"name": "twin", "url": a.url},
            {"name": "plain", "url": b.url},
            {"name": "down", "url": c.url},
        ]
        chaos = [rule("twin", corrupt_prediction=True), rule("down", abort_status=503)]
        config = load_config(
            one_route(tmp_path, prod.url, shadows, compare=KSERVE_LABEL, chaos=chaos)
        )
        registry = CollectorRegistry()
        metrics = Metrics(registry, recorder_registry=CollectorRegistry())
        recorder = RecorderProcess(config, metrics)
        server = Server(config, metrics, recorder, recorder, recorder.auto_choices)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            await send_many(f"http://{host}:{port}{PREDICT}", 60, b"{}")
        finally:
            await server.stop()

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"route": "m", **labels}) or 0.0

    assert sample("shadowproxy_chaos_injected_total", target="twin", fault="corrupt") == 60
    assert sample("shadowproxy_chaos_injected_total", target="down", fault="abort") == 60
    assert sample("shadowproxy_comparisons_total", shadow="twin", result="disagree") == 60
    assert sample("shadowproxy_comparisons_total", shadow="plain", result="agree") == 60
    assert sample("shadowproxy_comparisons_total", shadow="down", result="incomparable") == 60

    rows = read_dataset(str(tmp_path / "shadow-logs")).to_pylist()
    assert len(rows) == 180
    by_shadow: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_shadow.setdefault(row["shadow"], []).append(row)
    for row in by_shadow["twin"]:
        assert (row["chaos"], row["prod_chaos"]) == ("corrupt_prediction", None)
        assert row["agree"] is False
        label = json.loads(row["prod_prediction"])[0]
        assert json.loads(row["shadow_prediction"]) == [label + "~chaos"]
        assert json.loads(row["shadow_body"])["predictions"][0].endswith("~chaos")
    assert all(r["chaos"] is None and r["agree"] is True for r in by_shadow["plain"])
    for row in by_shadow["down"]:
        assert (row["chaos"], row["shadow_status"], row["agree"]) == ("abort_status=503", 503, None)
        assert row["compare_detail"] == "shadow status 503"
    assert a.seen and b.seen and not c.seen

    counts = duckdb.sql(
        f"""SELECT shadow, chaos, count(*) AS n, count(*) FILTER (WHERE agree) AS agreed
            FROM read_parquet('{tmp_path}/shadow-logs/pairs/**/*.parquet', hive_partitioning = true)
            GROUP BY ALL ORDER BY shadow"""
    ).fetchall()
    assert counts == [
        ("down", "abort_status=503", 60, 0),
        ("plain", None, 60, 60),
        ("twin", "corrupt_prediction", 60, 0),
    ]


async def test_the_report_sees_the_faults_of_a_real_run(tmp_path: Path) -> None:
    """The CLI proxy with the issue's three faults at higher fractions, then the CLI report:
    the chaos section must find each fault noticed, and the shadow's figures must count
    only the rows without faults."""
    chaos = [
        rule("candidate-v2", 0.3, delay_ms=200),
        rule("candidate-v2", 0.2, abort_status=503),
        rule("candidate-v2", 0.2, corrupt_prediction=True),
    ]
    async with upstream(model) as prod, upstream(model) as shadow:
        port, admin = free_port(), free_port()
        shadows = [{"name": "candidate-v2", "url": shadow.url}]
        config = write_config(
            tmp_path,
            [route("m", prod.url, shadows, compare=KSERVE_LABEL, chaos=chaos)],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin}",
        )
        metrics: dict[str, float] = {}

        async def traffic() -> None:
            await send_many(f"http://127.0.0.1:{port}{PREDICT}", 300, b"{}", concurrency=32)
            await asyncio.sleep(0.5)  # copies delayed by 200 ms finish
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                    text = await response.text()
            for line in text.splitlines():
                if line.startswith("shadowproxy_chaos_injected_total{"):
                    fault = line.split('fault="', 1)[1].split('"', 1)[0]
                    metrics[fault] = float(line.rsplit(" ", 1)[1])

        await run_cli_proxy(config, port, traffic)

    rows = read_dataset(str(tmp_path / "shadow-logs")).to_pylist()
    marked = [r for r in rows if r["chaos"] is not None]
    words = [w for r in marked for w in r["chaos"].split(",")]
    assert metrics == {
        "delay": sum(w.startswith("delay_ms=") for w in words),
        "abort": words.count("abort_status=503"),
        "corrupt": words.count("corrupt_prediction"),
    }
    assert all(metrics.values())

    out = tmp_path / "summary.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowproxy",
        "report",
        str(tmp_path / "shadow-logs"),
        "--json",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    printed = (await process.communicate())[0].decode()
    assert process.returncode == 0, printed
    summary = json.loads(out.read_text())
    [pair] = summary["pairs"]
    assert pair["rows"] == 300 - len(marked)
    assert pair["chaos_excluded"] == len(marked)
    assert pair["agreement_rate"] == 1.0  # the uncorrupted twin agrees on every clean row
    checks = {c["fault"]: c for c in summary["chaos"]}
    assert set(checks) == {"delay", "abort", "corrupt"}
    assert all(c["noticed"] is True for c in checks.values()), printed
    # About +200 ms: the delayed copies' own call can be a little faster than the median.
    assert checks["delay"]["injected"] - checks["delay"]["clean"] >= 150
    assert checks["abort"]["injected"] == 1.0 and checks["abort"]["clean"] == 0.0
    assert checks["corrupt"]["injected"] == 1.0 and checks["corrupt"]["clean"] == 0.0
    assert checks["corrupt"]["rows"] == metrics["corrupt"]
    assert "chaos m / candidate-v2: corrupt on" in printed
