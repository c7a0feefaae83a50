"""Chaos corruption: every comparator must see another prediction, and only the
prediction may change."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shadowproxy.compare import CompareConfig, compare
from shadowproxy.compare.comparators import judge
from shadowproxy.compare.corrupt import SUFFIX, corrupt_answer, corrupt_text, corrupt_value
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult
from tests.fuzzing import fuzz

JSON = "application/json"


def pair(prod: bytes, shadow: bytes, content_type: str = JSON) -> Pair:
    request = RequestInfo(
        request_id="r",
        ts=0.0,
        route="m",
        method="POST",
        path="/",
        query="",
        headers=[],
        body=b"{}",
        body_complete=True,
    )
    production = ProductionResult(
        status=200,
        latency_ms=1.0,
        error=None,
        body=prod,
        body_truncated=False,
        content_type=content_type,
    )
    result = ShadowResult(
        outcome="ok",
        status=200,
        latency_ms=1.0,
        error=None,
        body=shadow,
        body_truncated=False,
        content_type=content_type,
    )
    return Pair(request=request, shadow="s", role="candidate", production=production, result=result)


CASES: list[tuple[dict[str, Any], Any]] = [
    ({"prediction": "kserve-v1", "kind": "label"}, {"predictions": ["cat", "dog"]}),
    ({"prediction": "kserve-v1", "kind": "label"}, {"predictions": [2, 0, 1]}),
    ({"prediction": "kserve-v1", "kind": "label"}, {"predictions": [[0.1, 0.7, 0.2]]}),
    ({"prediction": "kserve-v1", "kind": "label"}, {"predictions": [{"cat": 0.5, "dog": 0.5}]}),
    ({"prediction": "kserve-v1", "kind": "label"}, {"predictions": [True]}),
    ({"prediction": "kserve-v1", "kind": "probabilities"}, {"predictions": [[0.5, 0, 0.5]]}),
    ({"prediction": "kserve-v1", "kind": "probabilities"}, {"predictions": [0.25] * 4}),
    ({"prediction": "kserve-v1", "kind": "probabilities", "max_js": 1},
     {"predictions": [{"a": 0.9, "b": 0.1}]}),
    ({"prediction": "kserve-v1", "kind": "numeric", "rel_tol": 0.3},
     {"predictions": [1.5, -3, 0, 1e-9]}),
    ({"prediction": "$.price", "kind": "numeric", "abs_tol": 0.9}, {"price": 0.0}),
    ({"prediction": "kserve-v1", "kind": "ranking", "min_overlap": 0.01},
     {"predictions": ["a", "b", "c"]}),
    ({"prediction": "kserve-v1", "kind": "ranking"}, {"predictions": [3, 1, 2]}),
    ({"prediction": "kserve-v1", "kind": "ranking"}, {"predictions": []}),
    ({"prediction": "openai-chat", "kind": "text", "min_similarity": 0.01},
     {"choices": [{"message": {"content": "The capital of France is Paris."}}]}),
    ({"prediction": "openai-chat", "kind": "text"}, {"choices": [{"message": {"content": None}}]}),
    ({"prediction": "open-inference", "output": "probs", "kind": "probabilities"},
     {"outputs": [{"name": "other", "shape": [1], "datatype": "INT64", "data": [7]},
                  {"name": "probs", "shape": [2, 3], "datatype": "FP32",
                   "data": [0.1, 0.8, 0.1, 0.6, 0.2, 0.2]}]}),
    ({"prediction": "open-inference", "kind": "label"},
     {"outputs": [{"name": "p", "shape": [2, 2], "datatype": "FP32",
                   "data": [[0.3, 0.7], [0.6, 0.4]]}]}),
    ({}, {"predictions": [1], "id": None, "ok": True}),
    ({"kind": "exact"}, []),
]  # fmt: skip


@pytest.mark.parametrize(("compare_config", "answer"), CASES)
def test_a_corrupted_answer_disagrees_where_the_same_answer_agrees(
    compare_config: dict[str, Any], answer: Any
) -> None:
    config = CompareConfig.model_validate(compare_config)
    body = orjson.dumps(answer)
    assert compare(config, pair(body, body)).agree is True
    corrupted = compare(config, pair(body, corrupt_answer(body, JSON, config)))
    assert corrupted.agree is False, corrupted.detail
    assert corrupted.batch_agree in (None, 0) or corrupted.comparator in ("auto:exact", "exact")


def test_only_the_prediction_changes() -> None:
    config = CompareConfig.model_validate({"prediction": "kserve-v1"})
    body = orjson.dumps({"predictions": [0.5], "model": "v2", "version": 3})
    answer = orjson.loads(corrupt_answer(body, JSON, config))
    assert answer == {"predictions": [1.5], "model": "v2", "version": 3}


def test_open_inference_keeps_names_shapes_and_types() -> None:
    config = CompareConfig.model_validate({"prediction": "open-inference", "output": "p"})
    body = orjson.dumps(
        {"model_name": "m", "outputs": [{"name": "p", "shape": [2, 2], "datatype": "FP32",
                                         "data": [0.3, 0.7, 0.6, 0.4]}]}
    )  # fmt: skip
    answer = orjson.loads(corrupt_answer(body, JSON, config))
    tensor = answer["outputs"][0]
    assert (answer["model_name"], tensor["name"], tensor["shape"], tensor["datatype"]) == (
        "m", "p", [2, 2], "FP32",
    )  # fmt: skip
    # Row by row: each row's top class moves to the next one.
    assert tensor["data"] == pytest.approx([3.4, 1.7, 1.6, 3.2])


def test_a_path_that_finds_nothing_corrupts_the_whole_answer() -> None:
    config = CompareConfig.model_validate({"prediction": "$.missing"})
    assert orjson.loads(corrupt_answer(b'{"a": "x"}', JSON, config)) == {"a": "x~chaos"}


STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}]}\r\n\r\n'
    b'data: {"choices":[{"index":0,"delta":{"content":" world, how"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def test_a_stream_has_its_text_corrupted_and_stays_a_complete_stream() -> None:
    config = CompareConfig.model_validate({"prediction": "openai-chat", "kind": "text"})
    corrupted = corrupt_answer(STREAM, "text/event-stream", config)
    assert corrupted.endswith(b"data: [DONE]\n\n")
    assert b'"content":"Hello~chaos"}}]}\r\n\r\n' in corrupted
    same = compare(config, pair(STREAM, STREAM, "text/event-stream"))
    assert same.agree is True
    result = compare(config, pair(STREAM, corrupted, "text/event-stream"))
    assert result.agree is False
    assert result.shadow_prediction == '["~chaosHello~chaos world,~chaos how~chaos"]'


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"", b'{"cut": ', b"\xff\xfe"])
def test_a_body_that_is_not_json_gets_a_suffix(body: bytes) -> None:
    assert corrupt_answer(body, "text/html", CompareConfig()) == body + b"~chaos"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("cat", "cat~chaos"), ("", "~chaos"), ("  ", "  ~chaos"),
     ("a b\nc", "a~chaos b~chaos\nc~chaos")],
)  # fmt: skip
def test_every_word_of_a_text_changes(text: str, expected: str) -> None:
    assert corrupt_text(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 1), (2, 4), (-3, -6), (0.25, 1.25), (-0.5, -1.5), (True, False), (None, SUFFIX),
     (math.inf, 0.0), ({}, {SUFFIX: SUFFIX}), ([], [SUFFIX]),
     ([0.1, 0.7, 0.2], [1.1, 1.7, 3.4]), ({"b": 0.5, "a": 0.5}, {"b": 3.0, "a": 1.5})],
)  # fmt: skip
def test_values(value: Any, expected: Any) -> None:
    assert corrupt_value(value) == expected


# --- properties ------------------------------------------------------------------------

finite = st.floats(-1e12, 1e12, allow_nan=False) | st.integers(-(2**52), 2**52)
scalars = st.none() | st.booleans() | finite | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=20,
)
scores = st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=8)
score_objects = st.dictionaries(st.sampled_from("abcdef"), st.floats(0, 1), min_size=2)


@fuzz(300)
@given(value=json_values)
def test_every_value_changes(value: Any) -> None:
    assert judge("exact", value, corrupt_value(value), CompareConfig()).agree is False


@fuzz(300)
@given(values=scores | st.lists(finite, min_size=2, max_size=8))
@example(values=[0.0, 1.505907241240226e-51])  # both move to 1.0: the top is the original's
def test_a_score_vector_names_another_class(values: list[float]) -> None:
    corrupted = corrupt_value(values)
    assert corrupted.index(max(corrupted)) != values.index(max(values))
    assert all(after != before for before, after in zip(values, corrupted, strict=True))


@fuzz(300)
@given(
    prediction=scores | score_objects | st.lists(scores, min_size=1, max_size=3),
    kind=st.sampled_from(["label", "probabilities", "numeric", "exact"]),
)
def test_comparators_that_agreed_on_the_same_scores_disagree_after_corruption(
    prediction: Any, kind: str
) -> None:
    config = CompareConfig()
    if judge(kind, prediction, prediction, config).agree is not True:
        return  # e.g. all-zero scores: incomparable to begin with
    assert judge(kind, prediction, corrupt_value(prediction), config).agree is False
