"""Fuzzing comparison: arbitrary JSON and arbitrary bytes through every comparator, the
decoding, the extraction (JSON paths, presets, open-inference, SSE) and ``Comparer``.

Nothing may raise; every verdict must be well formed (``agree`` True/False/None, a score
in the comparator's documented range and never NaN, details short and recordable as
UTF-8, batch counts consistent), identical answers never disagree, and the comparators
that are symmetric by definition give the same verdict both ways round.
``SHADOWPROXY_FUZZ_EXAMPLES=5000`` runs a longer, random search.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter
from typing import Any

import orjson
from hypothesis import event, example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from shadowproxy.compare import KINDS, CompareConfig, Comparer, compare, describe, jsonpath
from shadowproxy.compare.comparators import COMPARATORS, judge, resolve
from shadowproxy.compare.decode import decode
from shadowproxy.compare.extract import Extractor
from shadowproxy.compare.spec import PRESETS
from shadowproxy.compare.verdict import DETAIL_CHARS, Incomparable, Verdict
from shadowproxy.config import RouteConfig
from shadowproxy.recording.redact import Redactor
from shadowproxy.records import (
    OUTCOMES,
    Comparison,
    Pair,
    ProductionResult,
    RequestInfo,
    ShadowOutcome,
    ShadowResult,
)
from tests.fuzzing import fuzz

NAN = float("nan")
SCORE_RANGE = {
    "exact": (0.0, 1.0),
    "label": (0.0, 1.0),
    "probabilities": (0.0, 1.0),
    "ranking": (0.0, 1.0),
    "text": (0.0, 1.0),
    "numeric": (0.0, math.inf),
    "embedding": (0.0, 2.0),
}
"""What each comparator documents for ``diff_score``; exact and label give only 0 or 1.
Each is also symmetric by definition (JSON equality, same class, JS divergence, top-k
overlap and RBO, Dice similarity, ``math.isclose``'s rule): swapping sides must not
change ``agree`` or ``diff_score``."""

# --- JSON values ------------------------------------------------------------------------

any_text = st.text(max_size=10) | st.text(
    st.characters(codec=None, exclude_categories=()), max_size=4
)
words = st.sampled_from(
    ["cat", "dog", "", " ", "a b", "NaN", "Infinity", "é" * 50, "\ud800", "x\ny"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400, 0, 1, -1])
    | st.floats()
    | any_text
    | words
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(any_text | words, inner, max_size=5)
    ),
    max_leaves=25,
)
"""Arbitrary decoded JSON, beyond what a parser hands out: NaN, huge integers, surrogates."""

unit = st.floats(0, 1) | st.sampled_from([0, 1, 0.5, 1e-300, NAN, math.inf, -0.0, True])
shaped = (
    st.lists(unit, min_size=1, max_size=6)
    | st.lists(st.lists(unit, min_size=1, max_size=4), min_size=1, max_size=4)
    | st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), unit, min_size=1), max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "c"]), unit, min_size=1)
    | st.lists(st.sampled_from(["cat", "dog", 1, 2, 2.0, "a b"]), max_size=6)
    | st.lists(st.lists(st.integers(0, 6) | st.sampled_from(["x", "y"]), max_size=6), max_size=3)
    | st.lists(st.text(" ab.", max_size=20) | st.none(), max_size=4)
    | st.text(" abc.", max_size=40)
    | st.floats()
    | st.lists(st.binary(max_size=17).map(lambda b: base64.b64encode(b).decode()), max_size=3)
)
"""Predictions of the shapes the comparators look for, so their real paths run."""
predictions = json_values | shaped


@st.composite
def near(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with at most one small change: the other side of a pair of similar models."""
    twin = json.loads(json.dumps(value))  # equal, with fresh objects (NaN included)
    if not twin or not isinstance(twin, list | dict) or draw(st.booleans()):
        return twin
    if isinstance(twin, dict):  # another value for one class, keys in another order
        twin[draw(st.sampled_from(sorted(twin)))] = draw(unit)
        return reordered(twin)
    index = draw(st.integers(0, len(twin) - 1))
    change = draw(st.sampled_from(["nudge", "replace", "drop", "swap"]))
    item = twin[index]
    if change == "nudge" and isinstance(item, float):
        twin[index] = item + draw(st.sampled_from([1e-9, 1e-3, 0.5, -0.25]))
    elif change == "replace":
        twin[index] = draw(scalars)
    elif change == "drop":
        del twin[index]
    else:
        twin.reverse()
    return twin


configs = st.builds(
    CompareConfig,
    abs_tol=st.sampled_from([0.0, 1e-6, 0.1]),
    rel_tol=st.sampled_from([0.0, 1e-6, 0.5]),
    max_js=st.none() | st.sampled_from([0.0, 0.05, 1.0]),
    min_similarity=st.sampled_from([0.0, 0.8, 1.0]),
    top_k=st.sampled_from([1, 3, 1000]),
    min_overlap=st.sampled_from([0.0, 0.5, 1.0]),
    rbo_p=st.sampled_from([0.01, 0.9, 0.99]),
)


def reordered(value: Any) -> Any:
    """An equal JSON value with every object's keys in reverse order (JSON objects are
    unordered) and fresh objects throughout, NaN included."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(value)}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return json.loads(json.dumps(value))


def snapshot(value: Any) -> str:
    return json.dumps(value)


# --- verdict invariants -----------------------------------------------------------------


def check_verdict(verdict: Verdict, kind: str) -> None:
    assert isinstance(verdict, Verdict)
    assert verdict.agree in (True, False, None)
    score = verdict.diff_score
    if score is not None:
        low, high = SCORE_RANGE[kind]
        assert type(score) is float and low <= score <= high, (kind, verdict)
        if kind in ("exact", "label"):
            assert score in (0.0, 1.0)
    check_detail(verdict.detail)
    if verdict.agree is None:
        assert score is None and verdict.detail
        assert verdict.batch_size is None and verdict.batch_agree is None
    elif verdict.agree:
        assert verdict.detail is None and score is not None
    else:
        assert verdict.detail
    check_batch(verdict.agree, verdict.batch_size, verdict.batch_agree)


def check_detail(detail: str | None) -> None:
    if detail is not None:
        assert isinstance(detail, str) and 0 < len(detail) <= DETAIL_CHARS
        detail.encode("utf-8")  # recorded in Parquet: a lone surrogate would lose the row


def check_batch(agree: bool | None, size: int | None, agreeing: int | None) -> None:
    if size is not None:
        assert type(size) is int and size >= 0
    if agreeing is not None:
        assert size is not None and 0 <= agreeing <= size
        assert (agreeing == size) == bool(agree), (agree, size, agreeing)


def outcome(verdict: Verdict) -> tuple[Any, ...]:
    """What must not depend on the objects passed, only on their JSON values."""
    return (verdict.agree, verdict.diff_score, verdict.batch_size)


def same_both_ways(
    forward: tuple[bool | None, float | None], backward: tuple[bool | None, float | None]
) -> bool:
    """Equal verdicts from swapped sides (details name the sides). Scores may differ in
    the last bits: a sum taken in the other order rounds differently."""
    (agree, score), (agree_back, score_back) = forward, backward
    if agree != agree_back or (score is None) != (score_back is None):
        return False
    return score is None or score_back is None or math.isclose(score, score_back, rel_tol=1e-9)


# --- every comparator on arbitrary values -----------------------------------------------


@fuzz(200)
@given(prod=predictions, data=st.data(), config=configs)
@example(prod=[0.5, NAN], data=None, config=CompareConfig())
@example(prod=[[1e308, 1e308]], data=None, config=CompareConfig())
@example(prod=[10**400, 1.5], data=None, config=CompareConfig())
@example(prod={"a": 0.5, "b": 0.5}, data=None, config=CompareConfig())
@example(prod=[""], data=None, config=CompareConfig())  # beside [[]]: "" is no empty row
def test_comparators_never_raise_and_give_well_formed_verdicts(
    prod: Any, data: st.DataObject | None, config: CompareConfig
) -> None:
    shadow = data.draw(near(prod) | predictions) if data else json.loads(json.dumps(prod))
    before = snapshot((prod, shadow))
    for kind in COMPARATORS:
        forward = judge(kind, prod, shadow, config)
        check_verdict(forward, kind)
        backward = judge(kind, shadow, prod, config)
        check_verdict(backward, kind)
        assert same_both_ways(outcome(forward)[:2], outcome(backward)[:2]), (forward, backward)
    concrete, name = resolve("auto", prod)
    assert concrete in COMPARATORS and name == f"auto:{concrete}"
    assert snapshot((prod, shadow)) == before, "a comparator changed its input"


@fuzz(200)
@given(value=predictions, config=configs)
@example(value=[NAN, math.inf, -math.inf], config=CompareConfig())
@example(value={"a": NAN, "b": 1.0}, config=CompareConfig())
@example(value=[[NAN, 0.5]], config=CompareConfig())  # a NaN id in a ranking
@example(value={"a": 0.5, "b": 0.5}, config=CompareConfig())  # a tie, keys in another order
@example(value=[{"b": 0.2, "a": 0.4, "c": 0.4}], config=CompareConfig())
def test_identical_predictions_never_disagree(value: Any, config: CompareConfig) -> None:
    twin = reordered(value)
    for kind in COMPARATORS:
        verdict = judge(kind, value, twin, config)
        check_verdict(verdict, kind)
        assert verdict.agree is not False, (kind, verdict)
        if verdict.agree:
            assert verdict.diff_score == 0.0, (kind, verdict)
        assert outcome(verdict) == outcome(judge(kind, value, value, config))


# --- bodies: bytes in, a Comparison out -------------------------------------------------

JSON, SSE = "application/json", "text/event-stream"
content_types = st.sampled_from([JSON, SSE, None, "text/html", "text/event-stream; charset=utf-8"])


def envelopes(value: Any) -> st.SearchStrategy[Any]:
    """``value`` where a serving protocol puts it (KServe v1, open-inference, OpenAI)."""
    tensor = st.fixed_dictionaries(
        {"name": st.sampled_from(["probs", "label", "\ud800"]), "data": st.just(value)},
        optional={
            "shape": st.lists(st.integers(0, 4), max_size=3) | json_values,
            "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "BOOL"]),
        },
    )
    return st.one_of(
        st.just(value),
        st.just({"predictions": value, "id": "r-1"}),
        st.lists(tensor, min_size=1, max_size=3).map(lambda outputs: {"outputs": outputs}),
        st.just({"choices": [{"index": 0, "message": {"content": value}}]}),
        st.just({"choices": [{"text": value}, {"text": "b"}]}),
        st.just({"object": "list", "data": [{"index": 0, "embedding": value}]}),
    )


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """An OpenAI-style event stream, complete or cut, with varied framing."""
    pieces = draw(st.lists(any_text | st.none() | scalars, max_size=5))
    chat = draw(st.booleans())
    events: list[Any] = []
    for piece in pieces:
        choice = {"index": draw(st.sampled_from([0, 1, True, "x"]))}
        choice.update({"delta": {"content": piece}} if chat else {"text": piece})
        events.append({"id": "c-1", "choices": [choice]})
    if draw(st.booleans()):
        events.append({"choices": [{"index": 0, "finish_reason": "stop"}]})
    events.extend(draw(st.lists(json_values, max_size=2)))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines = [f"data: {json.dumps(event)}{newline}{newline}" for event in events]
    if draw(st.booleans()):
        lines.append(f"data: [DONE]{newline}{newline}")
    return "".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw: st.DrawFn, value: Any) -> bytes:
    body = json.dumps(draw(envelopes(value)), ensure_ascii=draw(st.booleans()))
    encoded = body.encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["json", "json", "orjson", "cut", "stream", "junk"]))
    if how == "orjson":
        try:
            return orjson.dumps(json.loads(body))
        except (orjson.JSONEncodeError, ValueError):
            return encoded
    if how == "cut":
        return encoded[: draw(st.integers(0, len(encoded)))]
    if how == "stream":
        return draw(streams())
    if how == "junk":
        return draw(
            st.binary(max_size=40)
            | st.sampled_from([b"", b"  \n", b"<html>oops</html>", b"null", b"[]", b"{}"])
        )
    return encoded


def pair_of(
    prod: bytes,
    shadow: bytes,
    types: tuple[str | None, str | None] = (JSON, JSON),
    route: str = "route",
    statuses: tuple[int | None, int | None] = (200, 200),
    shadow_outcome: ShadowOutcome = "ok",
    truncated: tuple[bool, bool] = (False, False),
) -> Pair:
    request = RequestInfo(
        request_id="r",
        ts=0.0,
        route=route,
        method="POST",
        path="/p",
        query="",
        headers=[],
        body=b"",
        body_complete=True,
    )
    production = ProductionResult(
        status=statuses[0],
        latency_ms=1.0,
        error=None,
        body=prod,
        body_truncated=truncated[0],
        content_type=types[0],
    )
    error = None if shadow_outcome == "ok" else "connection reset by peer é " * 30
    result = ShadowResult(
        outcome=shadow_outcome,
        status=statuses[1],
        latency_ms=1.0,
        error=error,
        body=shadow,
        body_truncated=truncated[1],
        content_type=types[1],
    )
    return Pair(
        request=request, shadow="shadow", role="candidate", production=production, result=result
    )


PATHS = [
    "$", "$.predictions", "$.predictions[*]", "$.predictions[0]", "$[0]", "$[-1]", "$.*",
    "$['a b']", "$.outputs[0].data", "$.choices[*].message.content", "$[*][*]",
]  # fmt: skip
IGNORES = ["$.id", "$[*]", "$.predictions[0]", "$.*", "$.outputs[*].name", "$.choices[1]"]


@st.composite
def pipeline_configs(draw: st.DrawFn) -> CompareConfig:
    prediction = draw(st.sampled_from([*PRESETS, *PATHS]))
    output = draw(st.sampled_from([None, "probs", "label", "nope"]))
    return CompareConfig(
        prediction=prediction,
        output=output if prediction == "open-inference" else None,
        kind=draw(st.sampled_from(KINDS)),
        ignore=tuple(draw(st.lists(st.sampled_from(IGNORES), max_size=2))),
        max_js=draw(st.sampled_from([None, 0.1])),
        top_k=draw(st.sampled_from([1, 10])),
    )


def check_comparison(comparison: Comparison, config: CompareConfig) -> None:
    assert isinstance(comparison, Comparison)
    name = comparison.comparator
    if config.kind != "auto":
        assert name == config.kind
    else:
        assert name == "auto" or name.removeprefix("auto:") in COMPARATORS, name
    kind = name.removeprefix("auto:")
    if kind == "auto":  # production's answer had nothing to resolve on
        assert comparison.agree is None
    verdict = Verdict(
        comparison.agree,
        comparison.diff_score,
        comparison.detail,
        comparison.batch_size,
        comparison.batch_agree,
    )
    check_verdict(verdict, kind if kind in COMPARATORS else "exact")
    for text in (comparison.prod_prediction, comparison.shadow_prediction):
        if text is not None:
            orjson.loads(text)  # recorded as JSON text: it must be JSON
    if comparison.agree is not None:
        assert comparison.prod_prediction is not None
        assert comparison.shadow_prediction is not None


@fuzz(150)
@given(
    config=pipeline_configs(),
    prod_value=predictions,
    data=st.data(),
    types=st.tuples(content_types, content_types),
    truncated=st.tuples(st.booleans(), st.booleans()),
)
@example(  # a lone surrogate in an output name reached the detail
    config=CompareConfig(prediction="open-inference", output="nope"),
    prod_value=None,
    data=None,
    types=(JSON, JSON),
    truncated=(False, False),
)
def test_any_bodies_give_a_well_formed_comparison(
    config: CompareConfig,
    prod_value: Any,
    data: st.DataObject | None,
    types: tuple[str | None, str | None],
    truncated: tuple[bool, bool],
) -> None:
    if data is None:
        prod = shadow = b'{"outputs": [{"name": "\\ud800", "data": [NaN]}]}'
    else:
        prod = data.draw(bodies(prod_value))
        shadow = data.draw(bodies(data.draw(near(prod_value))) | st.just(prod))
    comparison = compare(config, pair_of(prod, shadow, types, truncated=truncated))
    check_comparison(comparison, config)
    for name in ("comparator", "prod_prediction", "shadow_prediction", "detail"):
        text = getattr(comparison, name)
        if text is not None:
            text.encode("utf-8")  # every text column is written to Parquet as UTF-8
    if config.kind != "auto" and not any(truncated):
        swapped = compare(config, pair_of(shadow, prod, types[::-1]))
        both = (comparison.agree, comparison.diff_score), (swapped.agree, swapped.diff_score)
        assert same_both_ways(*both), (comparison, swapped)
    if prod == shadow and types[0] == types[1] and not any(truncated):
        assert comparison.agree is not False, comparison
        assert comparison.prod_prediction == comparison.shadow_prediction


@fuzz(100)
@given(
    body=st.binary(max_size=30) | predictions.map(lambda v: json.dumps(v).encode()),
    statuses=st.tuples(
        st.sampled_from([200, 204, 299, 300, 404, 500, None]),
        st.sampled_from([200, 201, 302, 503, None]),
    ),
    shadow_outcome=st.sampled_from(OUTCOMES),
)
def test_a_pair_without_two_good_answers_is_incomparable_with_a_reason(
    body: bytes, statuses: tuple[int | None, int | None], shadow_outcome: ShadowOutcome
) -> None:
    pair = pair_of(body, body, statuses=statuses, shadow_outcome=shadow_outcome)
    comparison = compare(CompareConfig(), pair)
    check_comparison(comparison, CompareConfig())
    good = all(status is not None and 200 <= status < 300 for status in statuses)
    if not good or shadow_outcome != "ok":
        assert comparison.agree is None
        assert comparison.detail is not None
        assert comparison.detail.startswith(("shadow", "production")), comparison.detail


# --- decoding and extraction ------------------------------------------------------------

plain_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@fuzz(150)
@given(value=plain_json, non_finite=st.sampled_from([None, NAN, math.inf, -math.inf]))
def test_decoding_reads_back_what_was_written(value: Any, non_finite: float | None) -> None:
    """orjson's bytes take the fast path; with a NaN or Infinity literal, the lenient one."""
    document = value if non_finite is None else [value, non_finite]
    for body in (json.dumps(document).encode(), json.dumps(document, indent=1).encode()):
        assert json.dumps(decode("production", body, JSON, False)) == json.dumps(document)


@fuzz(100)
@given(
    pieces=st.lists(st.text(max_size=6), max_size=6),
    newline=st.sampled_from(["\n", "\r\n"]),
    chat=st.booleans(),
)
def test_a_complete_stream_reassembles_to_its_pieces(
    pieces: list[str], newline: str, chat: bool
) -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"content": piece}} if chat else {"text": piece}]}
        for piece in pieces
    ]
    body = "".join(f"data: {json.dumps(event)}{newline}{newline}" for event in events)
    answer = decode("shadow", f"{body}data: [DONE]{newline}".encode(), SSE, False)
    if not pieces:
        assert answer["choices"] == []
        return
    preset = "openai-chat" if chat else "openai-completions"
    assert Extractor.build(CompareConfig(prediction=preset))("shadow", answer) == ["".join(pieces)]


@fuzz(150)
@given(
    data=st.lists(st.floats(0, 1) | st.integers(0, 3), max_size=12),
    shape=st.lists(st.integers(0, 5), min_size=2, max_size=3) | json_values,
    name=st.none() | st.sampled_from(["probs", "x"]),
)
def test_open_inference_rows_are_the_data_cut_by_its_shape(
    data: list[Any], shape: Any, name: str | None
) -> None:
    answer = {"outputs": [{"name": "probs", "shape": shape, "data": data}]}
    config = CompareConfig(prediction="open-inference", output=name)
    try:
        rows = Extractor.build(config)("production", answer)
    except Incomparable as exc:
        assert name == "x" or "shape" in exc.reason or "rows" in exc.reason, exc.reason
        return
    assert name != "x"
    if rows is not data:
        assert isinstance(rows, list) and len(rows) == shape[0]
        assert [value for row in rows for value in row] == data


# --- JSON paths -------------------------------------------------------------------------

path_text = st.text(st.sampled_from("$.[]*'\"\\-_a0 1é"), max_size=14) | st.text(max_size=8)
keys = st.text(max_size=6) | st.sampled_from(["a", "b", "*", "a b", "it's", 'q"', "\\", "0"])
steps = st.lists(keys | st.integers(-3, 3) | st.just(jsonpath.ANY), max_size=4)


def render(path_steps: list[Any]) -> str:
    """The text of a path with these steps, quoting keys ``.key`` cannot spell."""
    text = "$"
    for step in path_steps:
        if step is jsonpath.ANY:
            text += "[*]"
        elif isinstance(step, int):
            text += f"[{step}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", step):
            text += f".{step}"
        else:
            text += "['" + step.replace("\\", "\\\\").replace("'", "\\'") + "']"
    return text


@fuzz(150)
@given(text=path_text)
@example(text="$[" + "1" * 5000 + "]")
def test_any_path_text_parses_or_is_a_value_error(text: str) -> None:
    try:
        path = jsonpath.parse(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert str(path) == text
    assert parsed_steps_render_back(path)


def parsed_steps_render_back(path: jsonpath.JsonPath) -> bool:
    return jsonpath.parse(render(list(path.steps))).steps == path.steps


@fuzz(150)
@given(path_steps=steps, doc=json_values)
def test_paths_round_trip_and_never_raise_on_any_document(path_steps: list[Any], doc: Any) -> None:
    path = jsonpath.parse(render(path_steps))
    assert list(path.steps) == path_steps
    before = snapshot(doc)
    found = path.find(doc)
    if jsonpath.ANY not in path.steps:
        assert len(found) <= 1
    marker = object()
    replaced = path.replace(doc, marker)
    assert len(path.find(replaced)) == len(found)
    assert all(value is marker for value in path.find(replaced))
    deleted = path.delete(doc)
    if not found:
        assert snapshot(deleted) == before
    elif path.steps and not isinstance(path.steps[-1], int):
        assert path.find(deleted) == []
    assert snapshot(doc) == before, "a path changed the document it was applied to"


# --- the compare: block itself -----------------------------------------------------------

COMPARE_FIELDS = sorted(CompareConfig.model_fields)
block_values = (
    st.sampled_from([*PRESETS, *PATHS, *IGNORES, *KINDS, "$[", "$..a", "nope", "probs"])
    | st.lists(st.sampled_from([*IGNORES, "$", "$[", 7]), max_size=3)
    | st.floats()
    | st.integers(-2, 2000)
    | st.booleans()
    | st.none()
    | any_text
)


@fuzz(150)
@given(
    block=st.dictionaries(st.sampled_from(COMPARE_FIELDS) | any_text, block_values, max_size=5),
    value=predictions,
)
def test_a_compare_block_is_a_validation_error_or_a_working_comparison(
    block: dict[str, Any], value: Any
) -> None:
    try:
        config = CompareConfig.model_validate(block)
    except ValidationError:
        event("rejected")
        return
    event("accepted")
    assert json.loads(json.dumps(describe(config)))
    jsonpath.parse(config.path)
    body = json.dumps(value).encode("utf-8", "surrogatepass")
    check_comparison(compare(config, pair_of(body, body)), config)


# --- Comparer: per route, and the tally of what auto picked -----------------------------


def route(name: str, compare_block: dict[str, Any]) -> RouteConfig:
    return RouteConfig.model_validate(
        {
            "name": name,
            "match": {"path_prefix": f"/{name}"},
            "production": {"url": "http://127.0.0.1:1"},
            "compare": compare_block,
        }
    )


ROUTES = [
    route("auto", {}),
    route("preds", {"prediction": "kserve-v1", "ignore": ["$.id"]}),
    route("labels", {"prediction": "$.predictions[*]", "kind": "label"}),
]


@fuzz(40)
@given(
    traffic=st.lists(
        st.tuples(st.sampled_from([*(r.name for r in ROUTES), "unknown"]), predictions),
        min_size=1,
        max_size=8,
    ),
    data=st.data(),
)
def test_comparer_compares_each_route_as_configured_and_tallies_auto(
    traffic: list[tuple[str, Any]], data: st.DataObject
) -> None:
    comparer = Comparer(ROUTES)
    configs = {r.name: r.compare for r in ROUTES}
    picked: Counter[tuple[str, str]] = Counter()
    for name, value in traffic:
        prod, shadow = data.draw(bodies(value)), data.draw(bodies(data.draw(near(value))))
        pair = pair_of(prod, shadow, route=name)
        config = configs.get(name, CompareConfig())
        comparison = comparer(pair)
        check_comparison(comparison, config)
        assert comparison == compare(config, pair)
        _, sep, choice = comparison.comparator.partition(":")
        if sep:
            picked[name, choice] += 1
    tally = comparer.auto_choices()
    assert {(r, c): n for r, counts in tally.items() for c, n in counts.items()} == dict(picked)


def test_the_fuzzers_know_every_comparator() -> None:
    assert set(SCORE_RANGE) == set(COMPARATORS)


# --- what the fuzzers found -------------------------------------------------------------


def test_a_nan_id_ranked_by_both_models_is_shared() -> None:
    verdict = judge("ranking", [NAN, "a"], [float("nan"), "a"], CompareConfig())
    assert (verdict.agree, verdict.diff_score) == (True, 0.0)


def test_a_tie_in_an_object_of_scores_does_not_depend_on_key_order() -> None:
    tie, reversed_tie = {"a": 0.5, "b": 0.5}, {"b": 0.5, "a": 0.5}
    assert judge("label", tie, reversed_tie, CompareConfig()).agree is True
    leaning = {"b": 0.6, "a": 0.4}
    forward = judge("probabilities", tie, leaning, CompareConfig())
    backward = judge("probabilities", leaning, tie, CompareConfig())
    assert forward.agree is backward.agree is False  # the tie goes to "a", by name
    assert forward.detail == 'top-1 "a" vs "b" (JS 0.007299)'


def test_an_output_name_with_a_lone_surrogate_stays_recordable() -> None:
    body = b'{"outputs": [{"name": "\\ud800", "data": [NaN]}]}'
    config = CompareConfig(prediction="open-inference", output="probs")
    detail = compare(config, pair_of(body, body)).detail
    assert detail == "no output 'probs' in production body (outputs: \\ud800)"
    detail.encode("utf-8")


def test_the_root_path_replaces_the_whole_document() -> None:
    assert jsonpath.parse("$").replace({"ssn": "123"}, "[redacted]") == "[redacted]"
    assert Redactor(["$"]).body(b'{"ssn": "123"}') == b'"[redacted]"'
