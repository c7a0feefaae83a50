"""From captured bytes to predictions: decoding, SSE reassembly, presets, ignore, and why
a pair is incomparable (shadow outcome, statuses, bodies), in that order of precedence."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.compare import KINDS, PRESETS, CompareConfig, compare
from shadowproxy.compare.decode import decode
from shadowproxy.compare.extract import CLASS_DATATYPES, Extractor
from shadowproxy.compare.sse import reassemble
from shadowproxy.compare.verdict import Incomparable
from shadowproxy.records import (
    CLIENT_ABANDONED,
    Pair,
    ProductionResult,
    RequestInfo,
    ShadowOutcome,
    ShadowResult,
)

JSON = "application/json"
SSE = "text/event-stream"


def body_of(value: Any) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


def make_pair(
    prod: Any,
    shadow: Any,
    *,
    prod_type: str | None = JSON,
    shadow_type: str | None = JSON,
    outcome: ShadowOutcome = "ok",
    prod_status: int | None = 200,
    shadow_status: int | None = 200,
    prod_truncated: bool = False,
    shadow_truncated: bool = False,
    error: str | None = None,
) -> Pair:
    request = RequestInfo(
        request_id="req-1",
        ts=0.0,
        route="route",
        method="POST",
        path="/predict",
        query="",
        headers=[],
        body=b"{}",
        body_complete=True,
    )
    production = ProductionResult(
        status=prod_status,
        latency_ms=1.0,
        error=None,
        body=body_of(prod),
        body_truncated=prod_truncated,
        content_type=prod_type,
    )
    result = ShadowResult(
        outcome=outcome,
        status=shadow_status,
        latency_ms=2.0,
        error=error,
        body=body_of(shadow),
        body_truncated=shadow_truncated,
        content_type=shadow_type,
    )
    return Pair(
        request=request, shadow="candidate", role="candidate", production=production, result=result
    )


def extract(config: CompareConfig, answer: Any, side: str = "shadow") -> Any:
    return Extractor.build(config)(side, answer)


def reason(call: Any) -> str:
    with pytest.raises(Incomparable) as caught:
        call()
    return caught.value.reason


# --- realistic answers, one per protocol ----------------------------------------------

KSERVE_V1 = {"predictions": [[0.12, 0.88], [0.7, 0.3], [0.5, 0.5]]}
TFSERVING = {"predictions": [{"scores": [0.1, 0.9], "classes": ["no", "yes"]}]}
MLFLOW = {"predictions": [231000.5, 198000.0, 455100.25]}
OPEN_INFERENCE = {
    "model_name": "iris",
    "model_version": "3",
    "id": "7c3f",
    "parameters": {"content_type": "np"},
    "outputs": [
        {
            "name": "probabilities",
            "shape": [2, 3],
            "datatype": "FP32",
            "data": [0.1, 0.7, 0.2, 0.6, 0.3, 0.1],
        },
        {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["versicolor", "setosa"]},
        {"name": "embedding", "shape": [2, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
    ],
}  # fmt: skip
OPENAI_CHAT = {
    "id": "chatcmpl-9x",
    "object": "chat.completion",
    "created": 1_718_000_000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital of France."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
}
OPENAI_COMPLETIONS = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1_718_000_000,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [
        {"text": " Paris.", "index": 0, "logprobs": None, "finish_reason": "stop"},
        {"text": " Lyon.", "index": 1, "logprobs": None, "finish_reason": "stop"},
    ],
}


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("kserve-v1", KSERVE_V1, KSERVE_V1["predictions"]),
        ("tfserving", TFSERVING, TFSERVING["predictions"]),
        ("mlflow", MLFLOW, MLFLOW["predictions"]),
        ("openai-chat", OPENAI_CHAT, ["Paris is the capital of France."]),
        ("openai-completions", OPENAI_COMPLETIONS, [" Paris.", " Lyon."]),
        ("raw", OPENAI_CHAT, OPENAI_CHAT),
        ("open-inference", OPEN_INFERENCE, [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]),
        ("$.outputs[0].data", OPEN_INFERENCE, [0.1, 0.7, 0.2, 0.6, 0.3, 0.1]),
        ("$.outputs[*].name", OPEN_INFERENCE, ["probabilities", "label", "embedding"]),
        ("$.choices[*].message.content", OPENAI_CHAT, ["Paris is the capital of France."]),
        ("$.choices[0].message.content", OPENAI_CHAT, "Paris is the capital of France."),
        ("$.result.label", {"result": {"label": "spam", "score": 0.93}}, "spam"),
        ("$['odd key'][1]", {"odd key": [1, 2, 3]}, 2),
        ("$.usage", OPENAI_CHAT, OPENAI_CHAT["usage"]),
        ("$.predictions", {"predictions": None}, None),
    ],
)  # fmt: skip
def test_presets_and_paths_extract_the_prediction(
    prediction: str, answer: Any, expected: Any
) -> None:
    assert extract(CompareConfig(prediction=prediction), answer) == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (None, [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]),
        ("probabilities", [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]),
        ("label", ["versicolor", "setosa"]),
        ("embedding", [[1, 2, 3, 4], [5, 6, 7, 8]]),
    ],
)
def test_open_inference_picks_the_output_by_name_and_reshapes_rows(
    output: str | None, expected: Any
) -> None:
    config = CompareConfig(prediction="open-inference", output=output)
    assert extract(config, OPEN_INFERENCE) == expected


@pytest.mark.parametrize(
    ("answer", "output", "message"),
    [
        ({"outputs": []}, None, "no outputs in shadow body"),
        ({"predictions": [1]}, None, "no outputs in shadow body"),
        ([1, 2], None, "no outputs in shadow body"),
        (OPEN_INFERENCE, "logits", "no output 'logits' in shadow body (outputs: probabilities, label, embedding)"),
        ({"outputs": [{"name": "y", "shape": [1]}]}, None, "no data in shadow output 'y'"),
        ({"outputs": [{"name": "y", "shape": [2, 3], "data": [1, 2, 3]}]}, None,
         "shadow output 'y' has 3 values but shape [2, 3] needs 6"),
        ({"outputs": ["junk", 3]}, None, "no outputs in shadow body"),
    ],
)  # fmt: skip
def test_open_inference_problems_are_reasons(answer: Any, output: str | None, message: str) -> None:
    config = CompareConfig(prediction="open-inference", output=output)
    assert reason(lambda: extract(config, answer)) == message


@pytest.mark.parametrize(
    ("shape", "data", "expected"),
    [
        ([3], [1, 2, 3], [1, 2, 3]),
        ([1, 3], [1, 2, 3], [[1, 2, 3]]),
        ([2, 2], [[1, 2], [3, 4]], [[1, 2], [3, 4]]),  # already nested: left alone
        ("2x2", [1, 2, 3, 4], [1, 2, 3, 4]),  # not a shape: left alone
        ([2, -1], [1, 2], [1, 2]),
        ([0, 4], [], []),
        (None, [5], [5]),
    ],
)
def test_open_inference_reshapes_only_flat_data_with_a_real_2d_shape(
    shape: Any, data: Any, expected: Any
) -> None:
    answer = {"outputs": [{"name": "y", "shape": shape, "data": data}]}
    assert extract(CompareConfig(prediction="open-inference"), answer) == expected


def predict_output(datatype: str, data: list[Any], shape: list[int] | None = None) -> Any:
    """An Open Inference answer with one output, as MLServer answers ``predict``."""
    shape = [len(data), 1] if shape is None else shape
    output = {"name": "predict", "shape": shape, "datatype": datatype, "data": data}
    return {"model_name": "iris", "outputs": [output]}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (predict_output("INT64", [2, 0, 1]), [2, 0, 1]),
        (predict_output("INT32", [2]), [2]),
        (predict_output("UINT8", [[2], [0]], [2, 1]), [2, 0]),  # sent nested
        (predict_output("BYTES", ["virginica", "setosa"]), ["virginica", "setosa"]),
        (predict_output("BOOL", [True, False]), [True, False]),
        (predict_output("INT64", [2, 0, 1, 1], [2, 2]), [[2, 0], [1, 1]]),  # width 2: rows
        (predict_output("INT64", [2, 0], [2, 1, 1]), [2, 0]),
        (predict_output("FP32", [0.5, 1.5]), [[0.5], [1.5]]),  # a regression score stays
        (predict_output("FP64", [3.0], [1, 1]), [[3.0]]),
        (predict_output("int64", [2, 0]), [[2], [0]]),  # datatypes are upper case
        ({"outputs": [{"name": "y", "shape": [2, 1], "data": [2, 0]}]}, [[2], [0]]),
    ],
)
def test_open_inference_rows_of_one_class_are_labels(answer: Any, expected: Any) -> None:
    assert extract(CompareConfig(prediction="open-inference"), answer) == expected


@settings(max_examples=100, deadline=None)
@given(
    ids=st.lists(st.integers(0, 9), min_size=1, max_size=12),
    changed=st.sets(st.integers(0, 11)),
    datatype=st.sampled_from(sorted(CLASS_DATATYPES)),
)
def test_class_outputs_of_width_one_compare_row_by_row(
    ids: list[int], changed: set[int], datatype: str
) -> None:
    values: list[Any] = [bool(i % 2) for i in ids] if datatype == "BOOL" else ids
    if datatype == "BYTES":
        values = [f"class-{i}" for i in ids]
    other = [v if i not in changed else ("x" if isinstance(v, str) else not v if isinstance(v, bool) else v + 1)
             for i, v in enumerate(values)]  # fmt: skip
    config = CompareConfig(prediction="open-inference")
    assert extract(config, predict_output(datatype, values)) == values
    result = compare(
        config, make_pair(predict_output(datatype, values), predict_output(datatype, other))
    )
    same = sum(a == b for a, b in zip(values, other, strict=True))
    assert (result.comparator, result.batch_size, result.batch_agree) == (
        "auto:label",
        len(values),
        same,
    )
    assert result.agree == (same == len(values))


def class_ids(ids: list[Any]) -> Any:
    """Class ids of shape [N, 1] as TF Serving, KServe v1 and MLflow send them."""
    return {"predictions": [[i] for i in ids]}


CLASS_ANSWERS: dict[str, Any] = {
    "raw": lambda ids: [[i] for i in ids],
    "kserve-v1": class_ids,
    "tfserving": class_ids,
    "mlflow": class_ids,
    "open-inference": lambda ids: predict_output("INT64", ids),
}
"""A classifier's answer to three rows, per preset that can carry one."""
TEXT_PRESETS = {"openai-chat", "openai-completions"}


def test_every_preset_is_checked_for_class_ids_of_width_one() -> None:
    assert set(CLASS_ANSWERS) | TEXT_PRESETS >= set(PRESETS) - {"openai-embeddings"}


@pytest.mark.parametrize("kind", ["auto", "label"])
@pytest.mark.parametrize("prediction", sorted(CLASS_ANSWERS))
def test_class_ids_of_width_one_are_judged_as_labels(prediction: str, kind: str) -> None:
    config = CompareConfig(prediction=prediction, kind=kind)
    answer = CLASS_ANSWERS[prediction]
    same = compare(config, make_pair(answer([2, 0, 1]), answer([2, 0, 1])))
    assert (same.comparator, same.agree, same.batch_agree) == (
        "auto:label" if kind == "auto" else "label", True, 3)  # fmt: skip
    other = compare(config, make_pair(answer([2, 0, 1]), answer([2, 1, 1])))
    assert (other.agree, other.diff_score, other.batch_size, other.batch_agree) == (
        False,
        1.0,
        3,
        2,
    )
    assert other.detail == "[1]: 0 vs 1"


@pytest.mark.parametrize(
    ("datatype", "prod", "shadow", "comparator", "detail"),
    [
        ("BYTES", ["setosa", "virginica"], ["setosa", "setosa"], "auto:label", '[1]: "virginica" vs "setosa"'),
        ("BOOL", [True, False], [True, True], "auto:label", "[1]: false vs true"),
        ("FP32", [0.5, 1.5], [0.5, 1.25], "auto:numeric", "[1][0]: 1.5 vs 1.25"),
    ],
)  # fmt: skip
def test_open_inference_width_one_by_datatype(
    datatype: str, prod: list[Any], shadow: list[Any], comparator: str, detail: str
) -> None:
    config = CompareConfig(prediction="open-inference")
    result = compare(
        config, make_pair(predict_output(datatype, prod), predict_output(datatype, shadow))
    )
    assert (result.comparator, result.agree, result.detail) == (comparator, False, detail)


@pytest.mark.parametrize(
    ("prediction", "answer", "message"),
    [
        ("kserve-v1", {"outputs": []}, "no $.predictions in shadow body"),
        ("kserve-v1", [1, 2], "no $.predictions in shadow body"),
        ("openai-chat", {"choices": []}, "no $.choices[*].message.content in shadow body"),
        ("openai-chat", {"error": {"message": "overloaded"}}, "no $.choices[*].message.content in shadow body"),
        ("$.outputs[0].data", {"outputs": [{}]}, "no $.outputs[0].data in shadow body"),
    ],
)  # fmt: skip
def test_a_path_that_finds_nothing_is_a_reason(prediction: str, answer: Any, message: str) -> None:
    assert reason(lambda: extract(CompareConfig(prediction=prediction), answer)) == message


def test_ignore_paths_are_removed_from_the_body_before_extraction() -> None:
    config = CompareConfig(
        prediction="kserve-v1",
        ignore=("$.id", "$.predictions[*].request_ts", "$.predictions[*].meta.model"),
    )
    answer = {
        "id": "x",
        "predictions": [
            {"label": "a", "request_ts": 1, "meta": {"model": "v1", "region": "eu"}},
            {"label": "b", "request_ts": 2},
        ],
    }
    assert extract(config, answer) == [
        {"label": "a", "meta": {"region": "eu"}},
        {"label": "b"},
    ]


def test_ignored_fields_do_not_make_a_difference() -> None:
    config = CompareConfig(ignore=("$.id", "$.created", "$.model"))
    prod = dict(OPENAI_CHAT, id="a", created=1, model="m-1")
    shadow = dict(OPENAI_CHAT, id="b", created=2, model="m-2")
    result = compare(config, make_pair(prod, shadow))
    assert (result.comparator, result.agree, result.diff_score) == ("auto:exact", True, 0.0)
    assert result.prod_prediction is not None
    assert '"id"' not in result.prod_prediction
    assert compare(CompareConfig(), make_pair(prod, shadow)).detail == 'id: "a" vs "b"'


# --- decoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "truncated", "message"),
    [
        (b'{"a": 1', True, "shadow body truncated"),
        (b"", False, "shadow body is empty"),
        (b" \r\n\t", False, "shadow body is empty"),
        (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", False,
         "shadow body is not JSON (looks like HTML)"),
        (b"\n  <html><h1>Oops</h1>", False, "shadow body is not JSON (looks like HTML)"),
        (b"<?xml version='1.0'?><error/>", False, "shadow body is not JSON (looks like XML or HTML)"),
        (b"Internal Server Error", False, "shadow body is not JSON"),
        (b'{"a": 1', False, "shadow body is not JSON"),
        (b'{"a": 1}{"b": 2}', False, "shadow body is not JSON"),
        (b"\xff\xfe\x00\x01garbage", False, "shadow body is not JSON"),
        (b'"\xc3\x28"', False, "shadow body is not JSON"),
        (b"[NaN, 1", False, "shadow body is not JSON"),
        (b"[" * 2000 + b"]" * 2000, False, "shadow body is nested too deep"),
        (b"[" * 2000 + b"NaN" + b"]" * 2000, False, "shadow body is nested too deep"),
        (b"{'single': 'quotes'}", False, "shadow body is not JSON"),
    ],
)  # fmt: skip
def test_undecodable_bodies_are_reasons(body: bytes, truncated: bool, message: str) -> None:
    assert reason(lambda: decode("shadow", body, JSON, truncated)) == message


def test_bodies_over_the_size_limit_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shadowproxy.compare.decode.MAX_BODY_BYTES", 100)
    message = reason(lambda: decode("production", b"[" + b"1," * 60 + b"1]", JSON, False))
    assert message == "production body is too large to compare (123 bytes, limit 100)"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[1.5, NaN, Infinity, -Infinity]", [1.5, "nan", "inf", "-inf"]),
        (b'{"score": NaN}', {"score": "nan"}),
        (b"[123456789012345678901234567890, NaN]", [1.2345678901234568e29, "nan"]),
        (b"[18446744073709551615, NaN]", [18446744073709551615, "nan"]),
    ],
)
def test_nan_and_infinity_literals_are_parsed(body: bytes, expected: Any) -> None:
    def as_text(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return repr(value)
        if isinstance(value, list):
            return [as_text(item) for item in value]
        if isinstance(value, dict):
            return {key: as_text(item) for key, item in value.items()}
        return value

    assert as_text(decode("production", body, JSON, False)) == expected


def test_large_integers_read_as_orjson_reads_them() -> None:
    assert decode("shadow", b"[123456789012345678901234567890]", JSON, False) == [
        1.2345678901234568e29
    ]


def test_nan_bodies_compare_and_record_nan_as_null() -> None:
    same = compare(CompareConfig(), make_pair(b"[0.5, NaN]", b"[0.5, NaN]"))
    assert (same.agree, same.diff_score, same.prod_prediction) == (True, 0.0, "[0.5,null]")
    different = compare(CompareConfig(kind="numeric"), make_pair(b"[0.5, NaN]", b"[0.5, 0.1]"))
    assert (different.agree, different.diff_score) == (False, float("inf"))
    assert different.detail == "[1]: nan vs 0.1"


@pytest.mark.parametrize(("depth", "agree"), [(200, True), (300, None), (1000, None)])
def test_deep_json_is_incomparable_not_a_crash(depth: int, agree: bool | None) -> None:
    body = b"[" * depth + b"1" + b"]" * depth
    result = compare(CompareConfig(), make_pair(body, body))
    assert result.agree is agree
    if agree is None:
        assert result.detail == "production prediction is nested too deep (limit 254 levels)"


def test_a_deep_body_outside_the_prediction_does_not_matter() -> None:
    body = b'{"predictions": [1, 2], "debug": ' + b"[" * 400 + b"]" * 400 + b"}"
    result = compare(CompareConfig(prediction="kserve-v1"), make_pair(body, body))
    assert (result.agree, result.comparator) == (True, "auto:label")


# --- streams --------------------------------------------------------------------------


def chat_stream(pieces: list[str], *, done: bool = True, finish: bool = True) -> bytes:
    events = [
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    ]  # fmt: skip
    for piece in pieces:
        events.append(
            {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        )  # fmt: skip
    if finish:
        events.append(
            {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        )
    events.append({"id": "chatcmpl-1", "choices": [], "usage": {"total_tokens": len(pieces)}})
    lines = [b"data: " + orjson.dumps(event) + b"\n\n" for event in events]
    if done:
        lines.append(b"data: [DONE]\n\n")
    return b"".join(lines)


ANSWER = "Paris is the capital and most populous city of France. " * 20
PIECES = [ANSWER[i : i + 3] for i in range(0, len(ANSWER), 3)]


def test_a_chat_stream_is_reassembled_into_the_non_streamed_shape() -> None:
    answer = reassemble("production", chat_stream(PIECES))
    assert len(PIECES) > 300
    assert answer == {
        "id": "chatcmpl-1",
        "created": 1,
        "model": "m",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": {"total_tokens": len(PIECES)},
    }


def test_a_streamed_production_answer_compares_with_a_plain_shadow_answer() -> None:
    shadow = dict(OPENAI_CHAT, choices=[{"index": 0, "message": {"content": ANSWER}}])
    pair = make_pair(chat_stream(PIECES), shadow, prod_type="text/event-stream; charset=utf-8")
    result = compare(CompareConfig(prediction="openai-chat"), pair)
    assert (result.comparator, result.agree, result.diff_score) == ("auto:text", True, 0.0)
    assert result.prod_prediction == orjson.dumps([ANSWER]).decode()
    assert result.batch_size == 1


def test_a_completions_stream_with_two_choices_interleaved() -> None:
    chunks = [
        {"id": "c", "object": "text_completion", "choices": [{"index": i, "text": piece}]}
        for piece, i in [(" Par", 0), (" Ly", 1), ("is.", 0), ("on.", 1)]
    ]
    chunks.append({"id": "c", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    body = b"".join(b"data:" + orjson.dumps(chunk) + b"\r\n\r\n" for chunk in chunks)
    body += b": keep-alive comment\r\nevent: message\r\ndata: [DONE]\r\n\r\n"
    pair = make_pair(body, OPENAI_COMPLETIONS, prod_type=None)
    result = compare(CompareConfig(prediction="openai-completions"), pair)
    assert (result.agree, result.prod_prediction) == (True, '[" Paris."," Lyon."]')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (chat_stream(["Par", "is"], done=False, finish=False), "production stream ended before [DONE]"),
        (b"data: {not json}\n\ndata: [DONE]\n\n", "production stream event 1 is not JSON"),
        (b'data: [1, 2]\n\ndata: [DONE]\n\n', "production stream event 1 is not a JSON object"),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "production stream carried an error event"),
        (b"data: \xff\xfe\n\n", "production stream is not UTF-8"),
        (b"event: ping\n\n", "production stream ended before [DONE]"),
    ],
)  # fmt: skip
def test_broken_streams_are_reasons(body: bytes, message: str) -> None:
    assert reason(lambda: decode("production", body, SSE, False)) == message


def test_a_stream_without_done_but_finished_is_complete() -> None:
    answer = reassemble("shadow", chat_stream(["Hi", "!"], done=False))
    assert answer["choices"][0]["message"]["content"] == "Hi!"


def test_multi_line_data_events_are_joined() -> None:
    body = b'data: {"choices": [{"index": 0,\ndata:  "text": "ok", "finish_reason": "stop"}]}\n\n'
    assert reassemble("shadow", body)["choices"][0]["text"] == "ok"


def test_a_truncated_stream_is_production_body_truncated() -> None:
    pair = make_pair(chat_stream(PIECES)[:500], OPENAI_CHAT, prod_type=SSE, prod_truncated=True)
    result = compare(CompareConfig(prediction="openai-chat"), pair)
    assert (result.agree, result.detail) == (None, "production body truncated")


# --- why a pair is incomparable, in order ------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"outcome": "timeout", "shadow_status": None}, "shadow timeout"),
        ({"outcome": "error", "shadow_status": None, "error": "ClientConnectorError: refused"},
         "shadow error (ClientConnectorError: refused)"),
        ({"outcome": "skipped", "shadow_status": None, "error": "circuit_open"}, "shadow skipped (circuit_open)"),
        ({"outcome": "dropped", "shadow_status": None, "error": "max_in_flight"}, "shadow dropped (max_in_flight)"),
        ({"prod_status": 500}, "production status 500"),
        ({"prod_status": None}, "production gave no answer"),
        ({"shadow_status": 503}, "shadow status 503"),
        ({"shadow_status": 302}, "shadow status 302"),
        ({"shadow_status": None}, "shadow gave no answer"),
        ({"prod_status": 500, "shadow_status": 503}, "production status 500"),
        ({"outcome": "timeout", "prod_status": 500}, "shadow timeout"),
        ({"shadow_status": 404, "prod_truncated": True}, "shadow status 404"),
        ({"prod_truncated": True, "shadow_truncated": True}, "production body truncated"),
        ({"shadow_truncated": True}, "shadow body truncated"),
    ],
)  # fmt: skip
def test_incomparable_reasons_and_their_precedence(kwargs: dict[str, Any], detail: str) -> None:
    result = compare(CompareConfig(), make_pair({"a": 1}, {"a": 1}, **kwargs))
    assert (result.agree, result.diff_score, result.detail) == (None, None, detail)


@pytest.mark.parametrize("outcome", ["ok", "timeout"])
def test_an_abandoned_stream_is_incomparable_first_even_when_its_part_parses(
    outcome: ShadowOutcome,
) -> None:
    # The client left mid-stream: what production sent so far may look whole, but is not.
    pair = make_pair({"a": 1}, {"a": 1}, outcome=outcome)
    pair.production.error = CLIENT_ABANDONED
    result = compare(CompareConfig(), pair)
    assert (result.agree, result.diff_score, result.prod_prediction) == (None, None, None)
    assert result.detail == "client abandoned the stream: production's answer is partial"
    assert result.shadow_prediction == ('{"a":1}' if outcome == "ok" else None)


def test_long_shadow_errors_are_clipped() -> None:
    pair = make_pair({}, {}, outcome="error", shadow_status=None, error="x" * 5000)
    detail = compare(CompareConfig(), pair).detail
    assert detail is not None
    assert len(detail) < 200


def test_production_prediction_is_kept_when_the_shadow_fails() -> None:
    pair = make_pair(MLFLOW, b"", outcome="timeout", shadow_status=None)
    result = compare(CompareConfig(prediction="mlflow"), pair)
    assert result.comparator == "auto:numeric"
    assert (result.prod_prediction, result.shadow_prediction) == (
        "[231000.5,198000.0,455100.25]",
        None,
    )


def test_prediction_text_comes_from_the_shadow_when_production_is_garbage() -> None:
    result = compare(CompareConfig(), make_pair(b"<html>", {"a": 1}))
    assert (result.comparator, result.prod_prediction, result.shadow_prediction) == (
        "auto",
        None,
        '{"a":1}',
    )
    assert result.detail == "production body is not JSON (looks like HTML)"


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [
        ("kserve-v1", KSERVE_V1),
        ("tfserving", TFSERVING),
        ("mlflow", MLFLOW),
        ("open-inference", OPEN_INFERENCE),
        ("openai-chat", OPENAI_CHAT),
        ("openai-completions", OPENAI_COMPLETIONS),
        ("raw", OPEN_INFERENCE),
    ],
)
def test_every_preset_agrees_on_identical_answers_and_names_the_missing_prediction(
    prediction: str, answer: Any
) -> None:
    config = CompareConfig(prediction=prediction)
    same = compare(config, make_pair(answer, answer))
    assert (same.agree, same.diff_score, same.detail) == (True, 0.0, None)
    if prediction != "raw":
        missing = compare(config, make_pair(answer, {"unexpected": True}))
        assert missing.agree is None
        assert missing.detail is not None
        assert missing.detail.startswith("no ")
        assert missing.detail.endswith(" in shadow body") or "shadow body" in missing.detail


# --- garbage never crashes anything ---------------------------------------------------

garbage = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"data: {}", b"data: [DONE]", b"[NaN]", b"<html>", b"{", b"null", b"[]"]),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=20,
    ).map(lambda value: json.dumps(value).encode()),
)
content_types = st.sampled_from([JSON, SSE, None, "text/html"])
configs = st.builds(
    CompareConfig,
    prediction=st.sampled_from(
        [
            "raw",
            "kserve-v1",
            "open-inference",
            "openai-chat",
            "openai-completions",
            "openai-embeddings",
            "$[0]",
        ]
    ),
    kind=st.sampled_from(KINDS),
    ignore=st.sampled_from([(), ("$.id",), ("$[*]",)]),
)


@settings(max_examples=200, deadline=None)
@given(
    config=configs,
    prod=garbage,
    shadow=garbage,
    prod_type=content_types,
    shadow_type=content_types,
    truncated=st.booleans(),
)
def test_garbage_bodies_never_raise(
    config: CompareConfig,
    prod: bytes,
    shadow: bytes,
    prod_type: str | None,
    shadow_type: str | None,
    truncated: bool,
) -> None:
    pair = make_pair(
        prod, shadow, prod_type=prod_type, shadow_type=shadow_type, shadow_truncated=truncated
    )
    result = compare(config, pair)
    assert result.agree in (True, False, None)
    assert (result.agree is None) == (result.diff_score is None) or result.agree is False
    if result.agree is None:
        assert result.detail
