"""PROMOTE, HOLD and REJECT, each reached on real proxy traffic: model servers on
loopback, the proxy in-process with its real recorder writing Parquet, labels posted to
``/feedback``, then ``shadowproxy report --config --gate`` as a CD pipeline calls it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.cli import main as cli_main
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder
from tests.support import route, upstream, write_config

CLASSES = ("cat", "dog", "bird")
REQUESTS = 400

# Pre-registered for this route: 400 loopback requests are a small sample, so the margins
# are wider than the defaults (loopback latency jitters far more than 20% at the p99).
PROMOTION = {
    "min_labels": 300,
    "accuracy": {"non_inferiority_margin": 0.01},
    "disagreement": {"max_excess_over_baseline": 0.02},
    "latency_p99": {"max_ratio": 10.0},
    "error_rate": {"max_increase": 0.03},
}


def truth(i: int) -> str:
    return CLASSES[i % 3]


def production_answer(i: int) -> str:
    """Right on 85% of requests."""
    return truth(i) if i % 20 >= 3 else CLASSES[(i + 1) % 3]


def model(answer: Any) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        i = int((await request.json())["instances"][0])
        return web.json_response({"predictions": [answer(i)]})

    return handle


def worse(i: int) -> str:
    """Wrong on a quarter of the requests production gets right."""
    return CLASSES[(i + 2) % 3] if i % 4 == 0 else production_answer(i)


async def drive(tmp_path: Path, candidate: Any, promotion: dict[str, Any]) -> Path:
    """Send ``REQUESTS`` through the proxy, post every label, stop (flushing the
    recording); returns the config path."""
    async with (
        upstream(model(production_answer)) as production,
        upstream(model(candidate)) as cand,
        upstream(model(production_answer)) as base,
    ):
        shadows = [
            {"name": "cand", "url": cand.url, "sample_rate": 1.0},
            {"name": "base", "url": base.url, "sample_rate": 1.0, "role": "baseline"},
        ]
        path = write_config(
            tmp_path,
            [
                route(
                    "churn",
                    production.url,
                    shadows,
                    promotion=promotion,
                    compare={"prediction": "kserve-v1", "kind": "label"},
                )
            ],
        )
        config = load_config(path)
        metrics = Metrics(CollectorRegistry())
        comparer = Comparer(config.routes)
        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
        server = Server(config, metrics, recorder, recorder, comparer.auto_choices)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            admin_host, admin_port = server.admin_address  # type: ignore[misc]
            labels = []
            async with aiohttp.ClientSession() as session:
                for i in range(REQUESTS):
                    async with session.post(
                        f"http://{host}:{port}/v1/models/churn:predict", json={"instances": [i]}
                    ) as response:
                        assert response.status == 200
                        labels.append(
                            {"request_id": response.headers["X-Request-Id"], "label": truth(i)}
                        )
                url = f"http://{admin_host}:{admin_port}/feedback"
                async with session.post(url, json=labels) as response:
                    assert response.status == 202, await response.text()
        finally:
            await server.stop()
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("candidate", "min_labels", "status", "code"),
    [
        (production_answer, 300, "PROMOTE", 0),
        (production_answer, 2000, "HOLD", 3),
        (worse, 300, "REJECT", 4),
    ],
    ids=["promote", "hold", "reject"],
)
async def test_the_gate_decides_on_real_proxy_traffic(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    candidate: Any,
    min_labels: int,
    status: str,
    code: int,
) -> None:
    config = await drive(tmp_path, candidate, {**PROMOTION, "min_labels": min_labels})
    root = tmp_path / "shadow-logs"
    summary_path = tmp_path / "summary.json"
    args = ["report", str(root), "--config", str(config), "--gate", "--json", str(summary_path)]
    assert cli_main(args) == code
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("decision ")]
    assert line.startswith(f"decision churn / cand: {status}")
    pairs = json.loads(summary_path.read_text())["pairs"]
    cand = next(p for p in pairs if p["shadow"] == "cand")
    assert cand["labels"]["n"] == REQUESTS
    results = {c["name"]: c["result"] for c in cand["decision"]["criteria"]}
    if status == "HOLD":
        assert results["accuracy"] == "open" and "needs ~" in line
    if status == "REJECT":
        assert results["accuracy"] == "fail" and results["disagreement"] == "fail", json.dumps(cand)
    if status == "PROMOTE":
        assert set(results.values()) == {"pass"}
