"""MLServer, as users run it, behind the real CLI proxy: two scikit-learn iris models
(logistic regression in production, a shallow decision tree as the shadow), the Open
Inference protocol spoken by tritonclient and by requests, labels posted to
``/feedback``, and ``shadowproxy report``'s accuracy held against sklearn's own
``accuracy_score`` on the same rows, for ``predict`` ([N, 1] INT64) and ``predict_proba``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interop.peers import Peer, Proxy, cli_proxy, http_ok, report, start, wait_until
from tests.support import free_port

# Looked up, not imported: MLServer's generated messages and tritonclient's share the
# protobuf package "inference" in the default descriptor pool, so one process cannot
# import both (the servers run as their own processes anyway).
if importlib.util.find_spec("mlserver") is None:
    pytest.skip(
        "mlserver does not install here (pip install '.[interop]')", allow_module_level=True
    )
if importlib.util.find_spec("mlserver_sklearn") is None:
    pytest.skip("mlserver-sklearn does not install here", allow_module_level=True)
tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] missing")
requests = pytest.importorskip("requests")
joblib = pytest.importorskip("joblib")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import accuracy_score  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

pytestmark = pytest.mark.timeout(240)  # two MLServer processes start in the first test

PREDICT, PROBA = "iris", "iris-proba"
"""Two model names on each server, one model file: a request to ``iris-proba`` asks
for the ``predict_proba`` output, one to ``iris`` gets the default ``predict``."""


@dataclass
class Iris:
    features: list[list[float]]
    labels: list[int]
    production: list[int]
    shadow: list[int]
    proxy: Proxy
    production_url: str


def _model_repository(directory: Path, model: Any, parallel_workers: int = 0) -> tuple[Path, int]:
    directory.mkdir(parents=True)
    joblib.dump(model, directory / "model.joblib")
    for name in (PREDICT, PROBA):
        (directory / name).mkdir()
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(directory / "model.joblib"), "version": "v1"},
        }
        (directory / name / "model-settings.json").write_text(json.dumps(settings))
    port = free_port()
    server = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "metrics_endpoint": None,
        # Models run in the server process: no worker pool to start on a 2-core machine.
        "parallel_workers": parallel_workers,
    }
    (directory / "settings.json").write_text(json.dumps(server))
    return directory, port


def _mlserver(directory: Path, model: Any) -> tuple[Peer, str]:
    repository, port = _model_repository(directory, model)
    mlserver = Path(sys.executable).with_name("mlserver")
    peer = start(
        f"mlserver {directory.name}",
        [str(mlserver), "start", str(repository)],
        directory.with_suffix(".log"),
    )
    return peer, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Iris]:
    base = tmp_path_factory.mktemp("mlserver")
    data = sklearn_datasets.load_iris()
    features, labels = data.data, data.target
    production = LogisticRegression(max_iter=1000).fit(features, labels)
    shadow = DecisionTreeClassifier(max_depth=2, random_state=0).fit(features, labels)
    peers = [_mlserver(base / "production", production), _mlserver(base / "shadow", shadow)]
    try:
        for peer, url in peers:  # both start at once; wait for each
            for name in (PREDICT, PROBA):
                wait_until(peer, http_ok(f"{url}/v2/models/{name}/ready"), 180, f"serving {name}")
        (_, prod_url), (_, shadow_url) = peers
        shadows = [{"name": "tree", "url": shadow_url}]
        routes = [
            _route("iris-predict", PREDICT, prod_url, shadows),
            _route("iris-proba", PROBA, prod_url, shadows),
        ]
        with cli_proxy(base / "proxy", routes) as proxy:
            yield Iris(
                features=features.tolist(),
                labels=labels.tolist(),
                production=production.predict(features).tolist(),
                shadow=shadow.predict(features).tolist(),
                proxy=proxy,
                production_url=prod_url,
            )
    finally:
        for peer, _ in peers:
            peer.stop()


def _route(name: str, model: str, production: str, shadows: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": f"/v2/models/{model}/"},
        "production": {"url": production, "timeout_s": 10},
        "shadows": shadows,
        "compare": {"prediction": "open-inference"},
    }


def _body(model: str, rows: list[list[float]]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [len(rows), 4], "data": rows}]
    }
    if model == PROBA:
        body["outputs"] = [{"name": "predict_proba"}]
    return body


def _send_with_tritonclient(iris: Iris, model: str, prefix: str) -> list[str]:
    import numpy as np

    host = iris.proxy.url.removeprefix("http://")
    client = tritonclient_http.InferenceServerClient(host)
    output = "predict_proba" if model == PROBA else "predict"
    ids = []
    try:
        for i, row in enumerate(iris.features):
            tensor = tritonclient_http.InferInput("x", [1, 4], "FP64")
            # MLServer speaks JSON tensors only, not Triton's binary-data extension.
            tensor.set_data_from_numpy(np.array([row], dtype=np.float64), binary_data=False)
            request_id = f"{prefix}-{i}"
            result = client.infer(
                model,
                [tensor],
                outputs=[tritonclient_http.InferRequestedOutput(output, binary_data=False)],
                headers={"X-Request-Id": request_id},
            )
            answer = result.as_numpy(output)
            predicted = int(answer.argmax()) if model == PROBA else int(answer.ravel()[0])
            assert predicted == iris.production[i], f"row {i}: not production's answer"
            ids.append(request_id)
    finally:
        client.close()
    return ids


def _send_with_requests(iris: Iris, model: str, prefix: str) -> list[str]:
    ids = []
    with requests.Session() as session:
        for i, row in enumerate(iris.features):
            request_id = f"{prefix}-{i}"
            url = f"{iris.proxy.url}/v2/models/{model}/infer"
            response = session.post(
                url, json=_body(model, [row]), headers={"X-Request-Id": request_id}
            )
            assert response.status_code == 200, response.text
            [output] = response.json()["outputs"]
            data = output["data"]
            predicted = max(range(3), key=data.__getitem__) if model == PROBA else data[0]
            assert predicted == iris.production[i], f"row {i}: not production's answer"
            ids.append(request_id)
    return ids


def _accuracies(summary: dict[str, Any], route: str) -> tuple[float, float, int]:
    [pair] = [p for p in summary["pairs"] if p["route"] == route]
    labels = pair["labels"]
    assert labels is not None and labels["task"] == "classification", pair
    return labels["production"]["accuracy"], labels["shadow"]["accuracy"], labels["n"]


@pytest.fixture(scope="module")
def labeled_report(iris: Iris, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every iris row through both clients to both outputs, each labeled; then the report."""
    ids: list[tuple[str, int]] = []
    for model in (PREDICT, PROBA):
        for send, client in (
            (_send_with_tritonclient, "triton"),
            (_send_with_requests, "requests"),
        ):
            sent = send(iris, model, f"{client}-{model}")
            ids.extend(zip(sent, iris.labels, strict=True))
    feedback = [{"request_id": request_id, "label": label} for request_id, label in ids]
    response = requests.post(f"{iris.proxy.admin_url}/feedback", json=feedback, timeout=10)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": len(feedback)}
    iris.proxy.wait_rows([request_id for request_id, _ in ids], within_s=30)
    out = tmp_path_factory.mktemp("report") / "summary.json"
    return report(iris.proxy.root, out)


@pytest.mark.parametrize("route", ["iris-predict", "iris-proba"])
def test_report_accuracy_equals_sklearns_accuracy_score(
    iris: Iris, labeled_report: dict[str, Any], route: str
) -> None:
    production, shadow, n = _accuracies(labeled_report, route)
    assert n == 2 * len(iris.labels)  # tritonclient's and requests' copies, all labeled
    assert production == pytest.approx(accuracy_score(iris.labels, iris.production))
    assert shadow == pytest.approx(accuracy_score(iris.labels, iris.shadow))
    assert production != shadow  # the two models differ, so a mix-up cannot pass


@pytest.mark.parametrize(
    ("route", "comparator"), [("iris-predict", "label"), ("iris-proba", "probabilities")]
)
def test_each_row_is_compared_as_a_class(
    iris: Iris, labeled_report: dict[str, Any], route: str, comparator: str
) -> None:
    """Agreement is the share of rows where the two models pick the same class."""
    rows = [
        r
        for r in iris.proxy.rows()
        if r["route"] == route and r["request_id"].startswith("requests-")
    ]
    assert len(rows) == len(iris.labels)
    assert {r["comparator"] for r in rows} == {f"auto:{comparator}"}
    by_id = {r["request_id"]: r["agree"] for r in rows}
    model = PREDICT if route == "iris-predict" else PROBA
    expected = {
        f"requests-{model}-{i}": p == s
        for i, (p, s) in enumerate(zip(iris.production, iris.shadow, strict=True))
    }
    assert by_id == expected


def test_a_gzipped_batch_answer_is_compared(iris: Iris) -> None:
    """MLServer gzips answers of 1 KB and more when the client accepts gzip (requests
    does by default): the client gets production's bytes, the pair is still judged."""
    body = _body(PROBA, iris.features)
    direct = requests.post(f"{iris.production_url}/v2/models/{PROBA}/infer", json=body, timeout=10)
    assert direct.headers.get("Content-Encoding") == "gzip"  # the premise of this test
    response = requests.post(
        f"{iris.proxy.url}/v2/models/{PROBA}/infer",
        json=body,
        headers={"X-Request-Id": "batch-150"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers.get("Content-Encoding") == "gzip"
    assert response.json()["outputs"] == direct.json()["outputs"]
    row = iris.proxy.row("batch-150")
    assert row["prod_body"].startswith(b"{"), row["compare_detail"]
    assert row["agree"] is not None, row["compare_detail"]
    assert row["batch_size"] == len(iris.labels)
    assert row["batch_agree"] == sum(
        p == s for p, s in zip(iris.production, iris.shadow, strict=True)
    )
