"""A model's answers as real model servers send them, through comparison, a Parquet
recording and the report: its accuracy must be scikit-learn's ``accuracy_score`` (and a
regressor's MAE its ``mean_absolute_error``).

The recording is built the way the recorder builds it: each pair is compared with the
route's ``compare:`` settings, turned into a row by ``schema.pair_row`` and the labels
into rows by ``schema.feedback_row`` (the label as the feedback endpoint stores it:
the posted JSON). The models are real scikit-learn classifiers fit on iris.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, mean_absolute_error
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from shadowproxy.compare import CompareConfig, compare
from shadowproxy.recording.schema import (
    FEEDBACK_SCHEMA,
    PAIRS_SCHEMA,
    feedback_row,
    pair_row,
    to_record_batch,
)
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult
from shadowproxy.report import ReportOptions, build_report

TS = datetime(2024, 6, 1, 12, tzinfo=UTC).timestamp()
NOW = datetime(2024, 6, 2, tzinfo=UTC)


def mlserver_predict(value: Any) -> dict[str, Any]:
    """MLServer's answer to a scikit-learn classifier's ``predict`` on one row."""
    datatype = "BYTES" if isinstance(value, str) else "INT64"
    output = {"name": "predict", "shape": [1, 1], "datatype": datatype, "data": [value]}
    return {"model_name": "iris", "id": "1", "parameters": {}, "outputs": [output]}


def rows_of_one(value: Any) -> dict[str, Any]:
    """TF Serving and KServe v1: a class id tensor of shape [N, 1] as nested rows."""
    return {"predictions": [[value]]}


SERVERS: dict[str, tuple[CompareConfig, Callable[[Any], dict[str, Any]]]] = {
    "mlserver": (CompareConfig(prediction="open-inference"), mlserver_predict),
    "tfserving": (CompareConfig(prediction="tfserving", kind="label"), rows_of_one),
    "kserve-v1": (CompareConfig(prediction="kserve-v1"), rows_of_one),
}
"""Server -> the route's ``compare:`` and its answer to one row. ``tfserving`` records
``[[2]]`` (the report reads its class through both lists), the others ``[2]``."""

LABEL_FORMS: tuple[Callable[[Any], Any], ...] = (
    lambda y: y,  # 2 (or "setosa")
    lambda y: [y],  # [2]
    lambda y: str(y),  # "2"
)
"""How people post the same label: the value, a batch of one, a string."""


@pytest.fixture(scope="module")
def iris() -> tuple[Any, Any, Any, list[str]]:
    data = load_iris()
    x, y = data.data, data.target
    production = LogisticRegression(max_iter=200).fit(x, y).predict(x)
    shadow = DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y).predict(x)
    return y, production, shadow, list(data.target_names)


def pair_of(i: int, prod: dict[str, Any], shadow: dict[str, Any]) -> Pair:
    request = RequestInfo(
        request_id=f"req-{i:04d}",
        ts=TS + i,
        route="model",
        method="POST",
        path="/predict",
        query="",
        headers=[],
        body=b"{}",
        body_complete=True,
    )
    return Pair(
        request=request,
        shadow="tree",
        role="candidate",
        production=ProductionResult(
            status=200,
            latency_ms=5.0,
            error=None,
            body=orjson.dumps(prod),
            body_truncated=False,
            content_type="application/json",
        ),
        result=ShadowResult(
            outcome="ok",
            status=200,
            latency_ms=6.0,
            error=None,
            body=orjson.dumps(shadow),
            body_truncated=False,
            content_type="application/json",
        ),
    )


def write_recording(
    root: Path, config: CompareConfig, answers: list[tuple[Any, Any]], labels: list[Any]
) -> list[str]:
    """Pairs and feedback under ``root``; the comparator each pair was judged with."""
    rows, comparators = [], []
    for i, (prod, shadow) in enumerate(answers):
        pair = pair_of(i, prod, shadow)
        comparison = compare(config, pair)
        comparators.append(comparison.comparator)
        rows.append(pair_row(pair, comparison, bodies=False, max_body_bytes=0))
    pairs = root / "pairs" / "route=model" / "date=2024-06-01"
    pairs.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_batches([to_record_batch(rows, PAIRS_SCHEMA)]), pairs / "p.parquet"
    )
    feedback = root / "feedback" / "date=2024-06-01"
    feedback.mkdir(parents=True)
    posted = [
        feedback_row(f"req-{i:04d}", orjson.dumps(label).decode(), TS + 3600)
        for i, label in enumerate(labels)
    ]
    pq.write_table(
        pa.Table.from_batches([to_record_batch(posted, FEEDBACK_SCHEMA)]), feedback / "f.parquet"
    )
    return comparators


def as_json(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize("classes", ["ids", "names"])
def test_report_accuracy_is_sklearns_accuracy_score(
    tmp_path: Path, iris: tuple[Any, Any, Any, list[str]], server: str, classes: str
) -> None:
    truth, production, shadow, names = iris
    if classes == "names":  # a model trained on class names answers BYTES strings
        truth, production, shadow = (np.array(names)[v] for v in (truth, production, shadow))
    config, answer = SERVERS[server]
    answers = [
        (answer(as_json(p)), answer(as_json(s))) for p, s in zip(production, shadow, strict=True)
    ]
    labels = [LABEL_FORMS[i % 3](as_json(y)) for i, y in enumerate(truth)]
    comparators = write_recording(tmp_path, config, answers, labels)
    assert set(comparators) == {"auto:label" if config.kind == "auto" else "label"}

    report = build_report(ReportOptions(root=str(tmp_path)), now=NOW, progress=False)
    (pair,) = report.pairs
    assert pair.labels is not None and pair.labels.task == "classification"
    assert pair.labels.n == len(truth) == 150
    assert pair.labels.production["accuracy"] == accuracy_score(truth, production)
    assert pair.labels.shadow["accuracy"] == accuracy_score(truth, shadow)
    assert accuracy_score(truth, production) != accuracy_score(truth, shadow)
    # agreement is the two models' own agreement, row by row
    assert pair.agreement_rate == pytest.approx(float(np.mean(production == shadow)))


def mlserver_regression(value: float) -> dict[str, Any]:
    """MLServer's answer to a scikit-learn regressor's ``predict`` on one row."""
    output = {"name": "predict", "shape": [1, 1], "datatype": "FP64", "data": [value]}
    return {"model_name": "diabetes", "outputs": [output]}


def test_report_mae_of_a_regressor_of_width_one_is_sklearns(tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    x, y = x[:150], y[:150]
    production = LinearRegression().fit(x, y).predict(x)
    shadow = DecisionTreeRegressor(max_depth=3, random_state=0).fit(x, y).predict(x)
    answers = [
        (mlserver_regression(float(p)), mlserver_regression(float(s)))
        for p, s in zip(production, shadow, strict=True)
    ]
    config = CompareConfig(prediction="open-inference")
    comparators = write_recording(tmp_path, config, answers, [float(v) for v in y])
    assert set(comparators) == {"auto:numeric"}  # a float output of width 1 stays numeric

    report = build_report(ReportOptions(root=str(tmp_path)), now=NOW, progress=False)
    (pair,) = report.pairs
    assert pair.labels is not None and pair.labels.task == "regression"
    assert pair.labels.n == 150
    assert pair.labels.production["mae"] == pytest.approx(mean_absolute_error(y, production))
    assert pair.labels.shadow["mae"] == pytest.approx(mean_absolute_error(y, shadow))
