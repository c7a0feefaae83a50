"""gRPC through the proxy with real peers: two MLServer instances serving different
scikit-learn iris models, ``tritonclient[grpc]`` as the client, real Parquet, the real
report. One pair of MLServer processes serves the whole module (they take seconds to
start)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from tests.grpc_support import mlservers, write_iris_models
from tests.support import write_config

pytestmark = pytest.mark.timeout(180)
tritonclient = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("mlserver")
    models = write_iris_models(directory)
    with mlservers(directory, ("production", "shadow")) as addresses:
        yield {**models, "addresses": addresses}


def _route(iris: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    """A method route with the shadow, and a service route (no shadow) for the rest."""
    addresses = iris["addresses"]
    return [
        {
            "name": "iris",
            "match": {"grpc": "inference.GRPCInferenceService/ModelInfer"},
            "production": {"url": f"grpc://{addresses['production']}"},
            "shadows": [{"name": "tree", "url": f"grpc://{addresses['shadow']}"}],
            "compare": {"prediction": "open-inference", "output": "predict", "kind": "label"},
            **extra,
        },
        {
            "name": "oip",
            "match": {"grpc": "inference.GRPCInferenceService"},
            "production": {"url": f"grpc://{addresses['production']}"},
        },
    ]


def _infer(client: Any, row: np.ndarray, request_id: str) -> Any:
    tensor = tritonclient.InferInput("input-0", [1, 4], "FP32")
    tensor.set_data_from_numpy(row.reshape(1, 4).astype(np.float32))
    outputs = [
        tritonclient.InferRequestedOutput("predict"),
        tritonclient.InferRequestedOutput("predict_proba"),
    ]
    return client.infer("iris", [tensor], outputs=outputs, headers={"x-request-id": request_id})


async def test_tritonclient_through_the_proxy_gets_production_bit_for_bit(
    tmp_path: Path, iris: dict[str, Any]
) -> None:
    features, labels = iris["features"], iris["labels"]
    config = load_config(write_config(tmp_path, _route(iris), grpc_listen="127.0.0.1:0"))
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    comparer = Comparer(config.routes)
    recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
    server = Server(config, metrics, recorder, recorder, comparer.auto_choices)
    await server.start()
    try:
        host, port = server.grpc_address  # type: ignore[misc]

        def calls() -> None:
            proxied = tritonclient.InferenceServerClient(f"{host}:{port}")
            direct = tritonclient.InferenceServerClient(iris["addresses"]["production"])
            assert proxied.is_server_live()
            assert proxied.get_model_metadata("iris").name == "iris"
            for n, row in enumerate(features):
                through = _infer(proxied, row, f"req-{n:03d}")
                if n % 10:
                    continue  # every 10th answer is checked against production's own
                straight = _infer(direct, row, f"direct-{n:03d}")
                assert through.get_response().raw_output_contents == (
                    straight.get_response().raw_output_contents
                )
                for name in ("predict", "predict_proba"):
                    assert through.as_numpy(name).tobytes() == straight.as_numpy(name).tobytes()
            proxied.close()
            direct.close()

        await asyncio.to_thread(calls)
        admin = "http://{}:{}".format(*server.admin_address)  # type: ignore[str-format]
        feedback = [{"request_id": f"req-{n:03d}", "label": int(y)} for n, y in enumerate(labels)]
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{admin}/feedback", json=feedback) as response:
                assert response.status == 202, await response.text()
            async with session.get(f"{admin}/routes") as response:
                routes = (await response.json())["routes"]
    finally:
        await server.stop()

    prod_predictions = iris["production"].predict(features)
    shadow_predictions = iris["shadow"].predict(features)
    disagreements = int((prod_predictions != shadow_predictions).sum())
    assert 0 < disagreements < len(features)

    table = read_dataset(str(tmp_path / "shadow-logs")).to_pylist()
    assert len(table) == len(features)
    by_id = {row["request_id"]: row for row in table}
    for n in range(len(features)):
        row = by_id[f"req-{n:03d}"]
        assert (row["protocol"], row["method"]) == ("grpc", "POST")
        assert row["path"] == "/inference.GRPCInferenceService/ModelInfer"
        assert (row["prod_grpc_status"], row["shadow_grpc_status"]) == ("OK", "OK")
        assert (row["prod_status"], row["shadow_outcome"]) == (200, "ok")
        assert json.loads(row["prod_prediction"]) == [int(prod_predictions[n])]
        assert json.loads(row["shadow_prediction"]) == [int(shadow_predictions[n])]
        assert row["agree"] == (prod_predictions[n] == shadow_predictions[n])
        assert row["request_body"] and row["prod_body"]  # the message bytes
    sample = registry.get_sample_value
    pair = {"route": "iris", "shadow": "tree"}
    assert sample("shadowproxy_comparisons_total", {**pair, "result": "disagree"}) == disagreements
    assert sample("shadowproxy_comparisons_total", {**pair, "result": "agree"}) == (
        len(features) - disagreements
    )
    answered = {"code": "200", "grpc_status": "OK"}
    assert sample("shadowproxy_requests_total", {"route": "iris", **answered}) == len(features)
    assert sample("shadowproxy_requests_total", {"route": "oip", **answered}) == 2
    assert [route["match"] for route in routes] == [
        {"grpc": "inference.GRPCInferenceService/ModelInfer"},
        {"grpc": "inference.GRPCInferenceService"},
    ]
    assert routes[0]["shadows"][0]["name"] == "tree"

    summary = tmp_path / "summary.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowproxy", "report", str(tmp_path / "shadow-logs"),
        "--out", str(tmp_path / "report.html"), "--json", str(summary),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    printed = (await process.communicate())[0].decode()
    assert process.returncode == 0, printed
    from sklearn.metrics import accuracy_score

    reported = json.loads(summary.read_text())["pairs"][0]["labels"]
    assert reported["production"]["accuracy"] == pytest.approx(
        accuracy_score(labels, prod_predictions)
    )
    assert reported["shadow"]["accuracy"] == pytest.approx(
        accuracy_score(labels, shadow_predictions)
    )
