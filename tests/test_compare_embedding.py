"""``embedding`` and the ``openai-embeddings`` preset: OpenAI embeddings answers in both
encodings (base64 float32, as the openai SDK asks by default, and float arrays), cosine
similarity against scipy, the batch rule, and every way a vector has no cosine."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cosine as cosine_distance  # type: ignore[import-untyped]

from shadowproxy.compare import CompareConfig, compare
from shadowproxy.compare import embedding as embedding_module
from shadowproxy.compare.comparators import judge
from shadowproxy.compare.corrupt import corrupt_answer
from shadowproxy.compare.embedding import decode_vector, encode_vector
from shadowproxy.compare.verdict import Verdict
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult

NAN, INF = float("nan"), float("inf")
PRESET = CompareConfig(prediction="openai-embeddings")


def b64(vector: Any) -> str:
    """What OpenAI sends for ``encoding_format: base64``: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def as_floats(vector: Any) -> list[float]:
    """What OpenAI sends for ``encoding_format: float``: the float32 values as numbers."""
    return [float(x) for x in np.asarray(vector, dtype=np.float32)]


def openai_answer(vectors: list[Any], encoding: str) -> dict[str, Any]:
    """An OpenAI ``/v1/embeddings`` answer, field for field."""
    encode = b64 if encoding == "base64" else as_floats
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(vector)}
            for i, vector in enumerate(vectors)
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }


def pair_of(prod: Any, shadow: Any) -> Pair:
    def body(value: Any) -> bytes:
        return value if isinstance(value, bytes) else orjson.dumps(value)

    request = RequestInfo(
        request_id="r",
        ts=0.0,
        route="embed",
        method="POST",
        path="/v1/embeddings",
        query="",
        headers=[],
        body=b"{}",
        body_complete=True,
    )
    return Pair(
        request=request,
        shadow="v2",
        role="candidate",
        production=ProductionResult(
            status=200,
            latency_ms=1.0,
            error=None,
            body=body(prod),
            body_truncated=False,
            content_type="application/json",
        ),
        result=ShadowResult(
            outcome="ok",
            status=200,
            latency_ms=1.0,
            error=None,
            body=body(shadow),
            body_truncated=False,
            content_type="application/json",
        ),
    )


def run(prod: Any, shadow: Any, **options: Any) -> Verdict:
    return judge("embedding", prod, shadow, CompareConfig(**options))


def as_tuple(verdict: Verdict) -> tuple[Any, ...]:
    return (verdict.agree, verdict.diff_score, verdict.detail, verdict.batch_size,
            verdict.batch_agree)  # fmt: skip


RNG = np.random.default_rng(7)
VECTORS = [RNG.normal(size=256) for _ in range(3)]


# --- the preset on OpenAI answers ---------------------------------------------------------


@pytest.mark.parametrize("prod_encoding", ["base64", "float"])
@pytest.mark.parametrize("shadow_encoding", ["base64", "float"])
def test_both_encodings_of_one_answer_agree(prod_encoding: str, shadow_encoding: str) -> None:
    result = compare(PRESET, pair_of(openai_answer(VECTORS, prod_encoding),
                                      openai_answer(VECTORS, shadow_encoding)))  # fmt: skip
    assert (result.comparator, result.agree, result.batch_size, result.batch_agree) == (
        "auto:embedding", True, 3, 3)  # fmt: skip
    assert result.diff_score == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_item_i_is_compared_with_item_i_by_cosine(encoding: str) -> None:
    other = [VECTORS[0], VECTORS[1] + 0.8 * VECTORS[2], VECTORS[2]]
    result = compare(PRESET, pair_of(openai_answer(VECTORS, encoding),
                                      openai_answer(other, encoding)))  # fmt: skip
    as_sent = [np.float32(v).astype(np.float64) for v in (VECTORS[1], other[1])]
    expected = cosine_distance(*as_sent)
    assert (result.agree, result.batch_size, result.batch_agree) == (False, 3, 2)
    assert result.diff_score is not None
    assert result.diff_score == pytest.approx(expected, rel=1e-9)
    assert result.detail == f"[1]: cosine {1 - result.diff_score:.6g} < min_cosine 0.99"
    relaxed = compare(PRESET.model_copy(update={"min_cosine": 0.0}),
                      pair_of(openai_answer(VECTORS, encoding), openai_answer(other, encoding)))  # fmt: skip
    assert (relaxed.agree, relaxed.batch_agree) == (True, 3)


def test_a_batch_of_another_length_disagrees_with_a_reason() -> None:
    result = compare(PRESET, pair_of(openai_answer(VECTORS, "base64"),
                                      openai_answer(VECTORS[:2], "base64")))  # fmt: skip
    assert (result.agree, result.diff_score, result.detail) == (False, None, "batch size 3 vs 2")


def test_an_answer_without_embeddings_is_a_reason() -> None:
    error = {"error": {"message": "rate limited", "type": "requests"}}
    result = compare(PRESET, pair_of(openai_answer(VECTORS, "float"), error))
    assert (result.agree, result.detail) == (None, "no $.data[*].embedding in shadow body")


def test_nan_in_a_float_answer_is_a_reason() -> None:
    body = b'{"data": [{"index": 0, "embedding": [0.5, NaN]}]}'
    result = compare(PRESET, pair_of(body, body))
    assert (result.agree, result.detail) == (None, "production embedding [0] has nan at [1]")


def test_decoding_matches_the_openai_sdk() -> None:
    """The SDK reads base64 as ``np.frombuffer(base64.b64decode(s), dtype="float32")``."""
    text = b64(VECTORS[0])
    sdk = np.frombuffer(base64.b64decode(text), dtype="float32").tolist()
    assert list(decode_vector(text, "production")) == sdk
    assert encode_vector(sdk) == text


# --- the comparator on plain values -------------------------------------------------------


@pytest.mark.parametrize(
    ("prod", "shadow", "options", "expected"),
    [
        ([1.0, 0.0], [1.0, 0.0], {}, (True, 0.0, None, None, None)),
        ([3, 4], [6, 8], {}, (True, 0.0, None, None, None)),
        ([1.0, 0.0], [0.0, 1.0], {}, (False, 1.0, "cosine 0 < min_cosine 0.99", None, None)),
        ([1.0, 0.0], [-2.0, 0.0], {}, (False, 2.0, "cosine -1 < min_cosine 0.99", None, None)),
        ([1.0, 0.0], [1.0, 1.0], {"min_cosine": 0.7}, (True, pytest.approx(1 - math.sqrt(0.5)), None, None, None)),
        ([1.0, 0.0], [0.0, 1.0], {"min_cosine": 0.0}, (True, 1.0, None, None, None)),
        ([1.0, 0.0], [-1.0, 0.0], {"min_cosine": -1.0}, (True, 2.0, None, None, None)),
        ([1.0, 2.0], [1.0, 2.0, 3.0], {}, (False, None, "2 dimensions vs 3", None, None)),
        ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]], {},
         (False, 2.0, "[1]: cosine -1 < min_cosine 0.99", 2, 1)),
        ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0]], {}, (False, None, "batch size 2 vs 1", 2, None)),
        ([b64([1, 0]), b64([0, 1])], [[1.0, 0.0], b64([0, 1])], {}, (True, 0.0, None, 2, 2)),
        ([1e200, 1e200], [1e200, 1e200], {}, (True, 0.0, None, None, None)),
        ([1e200, 0.0], [1e200, 1e-200], {}, (True, 0.0, None, None, None)),  # squares overflow
        ([1e-200, 1e-200], [1e-200, -1e-200], {}, (False, 1.0, "cosine 0 < min_cosine 0.99", None, None)),
        ([], [], {}, (True, 0.0, None, 0, 0)),
    ],
)  # fmt: skip
def test_embedding(
    prod: Any, shadow: Any, options: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    assert as_tuple(run(prod, shadow, **options)) == expected


@pytest.mark.parametrize(
    ("prod", "reason"),
    [
        ([0.0, 0.0], "production embedding is all zeros (no direction, so no cosine)"),
        (b64([0, 0, 0]), "production embedding is all zeros (no direction, so no cosine)"),
        ([1.0, NAN], "production embedding has nan at [1]"),
        ([INF, 1.0], "production embedding has inf at [0]"),
        (b64([1.0, NAN]), "production embedding has nan at [1]"),
        (["AAA"], "production embedding [0]: base64 of 3 characters (not a multiple of 4)"),
        ("AAAAAAAA", "production embedding: 6 bytes, not whole float32 values (4 bytes each)"),
        ("!!!!", "production embedding: not base64 (Only base64 data is allowed)"),
        ("éééé", "production embedding: not base64 (string argument should contain only ASCII characters)"),
        ("A===", "production embedding: not base64 (Invalid base64-encoded string: "),
        ("", "production embedding is empty"),
        ({"a": 1}, 'production prediction: expected an embedding (an array of numbers or base64 float32), got {"a":1}'),
        ([[1.0, "x"]], 'production embedding [0]: expected numbers, got "x"'),
        ([1.0, None], "production embedding: expected numbers, got null"),
        ([1.0, [2.0]], "production embedding: expected numbers, got [2.0]"),
        ([True, False], "production prediction [0]: expected an embedding (an array of numbers or base64 float32), got true"),
        (None, "production prediction: expected an embedding (an array of numbers or base64 float32), got null"),
    ],
)  # fmt: skip
def test_what_has_no_cosine_is_a_reason(prod: Any, reason: str) -> None:
    verdict = run(prod, prod)
    assert (verdict.agree, verdict.diff_score) == (None, None)
    assert verdict.detail is not None and verdict.detail.startswith(reason), verdict.detail


def test_the_shadow_side_is_named_too() -> None:
    assert run([1.0, 0.0], [0.0, 0.0]).detail == (
        "shadow embedding is all zeros (no direction, so no cosine)"
    )


def test_the_number_of_values_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_module, "MAX_ELEMENTS", 10)
    assert run([[1.0] * 6, [1.0] * 6], [[1.0] * 6, [1.0] * 6]).detail == (
        "production prediction has over 10 numbers"
    )
    assert run(b64([1.0] * 12), b64([1.0] * 12)).detail == (
        "production embedding: base64 of 64 characters, over 10 numbers"
    )


# --- properties ---------------------------------------------------------------------------

vectors = st.integers(1, 24).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n),
        st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(pair=vectors, threshold=st.floats(-1, 1))
def test_diff_score_is_scipys_cosine_distance(
    pair: tuple[list[float], list[float]], threshold: float
) -> None:
    x, y = pair
    verdict = run(x, y, min_cosine=threshold)
    if not any(x) or not any(y):
        assert verdict.agree is None and "all zeros" in (verdict.detail or "")
        return
    # scipy's reference on the vectors scaled to a largest value of 1 (the cosine is the
    # same; scipy's own products would underflow on values like 1e-308)
    expected = cosine_distance(np.divide(x, max(map(abs, x))), np.divide(y, max(map(abs, y))))
    assert verdict.diff_score is not None and 0.0 <= verdict.diff_score <= 2.0
    assert verdict.diff_score == pytest.approx(expected, abs=1e-9)
    if abs(1.0 - expected - threshold) > 1e-9:  # not on the threshold, within rounding
        assert verdict.agree == (1.0 - expected >= threshold)
    assert run(y, x).diff_score == verdict.diff_score  # symmetric
    as_float32 = run(b64(x), b64(x))  # tiny values can round to 0 in float32
    assert as_float32.diff_score == (0.0 if np.any(np.asarray(x, dtype=np.float32)) else None)


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(max_size=12) | st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode())
)
def test_any_string_decodes_or_is_a_reason(text: str) -> None:
    verdict = run([text], [text])
    assert verdict.agree in (True, None)
    if verdict.agree is None:
        assert verdict.detail and verdict.detail.startswith("production embedding [0]")


# --- chaos ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_a_corrupted_embedding_points_the_other_way(encoding: str) -> None:
    body = orjson.dumps(openai_answer(VECTORS, encoding))
    corrupted = corrupt_answer(body, "application/json", PRESET)
    answer = orjson.loads(corrupted)
    assert [item["index"] for item in answer["data"]] == [0, 1, 2]
    assert all(
        isinstance(item["embedding"], str) == (encoding == "base64") for item in answer["data"]
    )
    result = compare(PRESET, pair_of(body, corrupted))
    assert (result.agree, result.batch_agree) == (False, 0)
    assert result.diff_score is not None and result.diff_score > 1.0  # cosine below 0
    exact = compare(PRESET.model_copy(update={"kind": "exact"}), pair_of(body, corrupted))
    assert exact.agree is False
