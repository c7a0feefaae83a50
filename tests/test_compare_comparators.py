"""The comparators on plain JSON values: tables of verdicts, references (scipy for the
Jensen-Shannon divergence, the RBO formula written out), and properties: identical
values agree, exact is symmetric, numeric follows its tolerance, nothing ever raises."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Hashable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped]

from shadowproxy.compare import KINDS, CompareConfig, compare
from shadowproxy.compare.auto import pick
from shadowproxy.compare.comparators import judge, resolve
from shadowproxy.compare.scores import jensen_shannon, rbo
from shadowproxy.compare.spec import MAX_ELEMENTS
from shadowproxy.compare.text import similarity
from shadowproxy.compare.verdict import Verdict
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult

NAN, INF = float("nan"), float("inf")


def run(kind: Any, prod: Any, shadow: Any, **options: Any) -> Verdict:
    """Judge with comparator ``kind`` (``auto`` resolved from ``prod``, as the pipeline does)."""
    concrete, _ = resolve(kind, prod)
    return judge(concrete, prod, shadow, CompareConfig(**options))


def as_tuple(verdict: Verdict) -> tuple[Any, ...]:
    return (verdict.agree, verdict.diff_score, verdict.detail, verdict.batch_size,
            verdict.batch_agree)  # fmt: skip


def pair_of(prod: bytes, shadow: bytes) -> Pair:
    request = RequestInfo(
        request_id="r",
        ts=0.0,
        route="route",
        method="POST",
        path="/p",
        query="",
        headers=[],
        body=b"",
        body_complete=True,
    )
    return Pair(
        request=request,
        shadow="shadow",
        role="candidate",
        production=ProductionResult(
            status=200,
            latency_ms=1.0,
            error=None,
            body=prod,
            body_truncated=False,
            content_type="application/json",
        ),
        result=ShadowResult(
            outcome="ok",
            status=200,
            latency_ms=1.0,
            error=None,
            body=shadow,
            body_truncated=False,
            content_type="application/json",
        ),
    )


# --- exact ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prod", "shadow", "expected"),
    [
        ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, (True, 0.0, None, None, None)),
        ({"a": 1}, {"a": 1.0}, (True, 0.0, None, None, None)),
        ({"a": True}, {"a": 1}, (False, 1.0, "a: true vs 1", None, None)),
        ([False], [0], (False, 1.0, "[0]: false vs 0", 1, 0)),
        ({"a": None}, {"a": 0}, (False, 1.0, "a: null vs 0", None, None)),
        ({"a": 1, "b": 2}, {"a": 1}, (False, 1.0, "b: missing in shadow", None, None)),
        ({"a": 1}, {"a": 1, "z": 2}, (False, 1.0, "z: only in shadow", None, None)),
        ({"x y": 1}, {"x y": 2}, (False, 1.0, "['x y']: 1 vs 2", None, None)),
        ({"o": [{"k": "v"}]}, {"o": [{"k": "w"}]}, (False, 1.0, 'o[0].k: "v" vs "w"', None, None)),
        ([{"k": [1, 2]}, {"k": [1, 3]}], [{"k": [1, 2]}, {"k": [1, 4]}],
         (False, 1.0, "[1].k[1]: 3 vs 4", 2, 1)),
        ([[1, 2], [3]], [[1, 2], [3, 4]], (False, 1.0, "[1]: length 1 vs 2", 2, 1)),
        ([1, 2, 3], [1, 2], (False, None, "batch size 3 vs 2", 3, None)),
        ([1], {"a": 1}, (False, None, "batch size 1 vs not a batch", 1, None)),
        ("a", ["a"], (False, None, "batch size not a batch vs 1", None, None)),
        ([NAN, 1.0], [NAN, 1.0], (True, 0.0, None, 2, 2)),
        ({"x": "é" * 100}, {"x": "e"}, (False, 1.0, f'x: "{"é" * 38}… vs "e"', None, None)),
        ([], [], (True, 0.0, None, 0, 0)),
        (None, None, (True, 0.0, None, None, None)),
    ],
)  # fmt: skip
def test_exact(prod: Any, shadow: Any, expected: tuple[Any, ...]) -> None:
    assert as_tuple(run("exact", prod, shadow)) == expected


# --- numeric ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prod", "shadow", "options", "expected"),
    [
        (1.0, 1.0, {}, (True, 0.0, None, None, None)),
        (1.0, 1.0 + 5e-7, {}, (True, pytest.approx(5e-7), None, None, None)),
        (1.0, 1.1, {}, (False, pytest.approx(0.1), "1.0 vs 1.1", None, None)),
        (1.0, 1.1, {"abs_tol": 0.2}, (True, pytest.approx(0.1), None, None, None)),
        (100.0, 109.0, {"rel_tol": 0.1}, (True, 9.0, None, None, None)),
        (100.0, 112.0, {"rel_tol": 0.1}, (False, 12.0, "100.0 vs 112.0", None, None)),
        (1, 1, {}, (True, 0.0, None, None, None)),
        ([0.5, 0.42, 0.7], [0.5, 0.51, 0.7], {}, (False, pytest.approx(0.09), "[1]: 0.42 vs 0.51", 3, 2)),
        ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.5]], {}, (False, 0.5, "[1][1]: 4.0 vs 4.5", 2, 1)),
        ([[1.0, 2.0], [3.0, 4.0]], [[1.5, 2.0], [3.0, 4.5]], {}, (False, 0.5, "[0][0]: 1.0 vs 1.5", 2, 0)),
        ([[1.0, 2.0], [3.0]], [[1.0, 2.0], [3.0, 4.0]], {}, (False, 0.0, "[1]: shape [1] vs [2]", 2, 1)),
        ([[[1, 2]], [[3, 4]]], [[[1, 2]], [[3, 5]]], {}, (False, 1.0, "[1][0][1]: 4 vs 5", 2, 1)),
        ([1.0, [2.0, 3.0]], [1.0, [2.0, 3.5]], {}, (False, 0.5, "[1][1]: 3.0 vs 3.5", 2, 1)),
        ([1.0, 2.0], [1.0], {}, (False, None, "batch size 2 vs 1", 2, None)),
        ([NAN], [NAN], {}, (True, 0.0, None, 1, 1)),
        ([NAN, 1.0], [0.0, 1.0], {}, (False, INF, "[0]: nan vs 0.0", 2, 1)),
        ([INF, 1.0], [INF, 1.0], {}, (True, 0.0, None, 2, 2)),
        ([INF], [-INF], {}, (False, INF, "[0]: inf vs -inf", 1, 0)),
        ([1e308], [-1e308], {}, (False, INF, "[0]: 1e+308 vs -1e+308", 1, 0)),
        ([], [], {}, (True, 0.0, None, 0, 0)),
        ([[], []], [[], []], {}, (True, 0.0, None, 2, 2)),
        # the three ways the fast path settles tolerance: all over the loosest tolerance,
        # a few to check one by one, many to check as maps
        ([100.0, 200.0], [110.0, 220.0], {}, (False, 20.0, "[0]: 100.0 vs 110.0", 2, 0)),
        ([1.0] * 7 + [1e6], [3.0] * 7 + [1e6 + 0.5], {}, (False, 2.0, "[0]: 1.0 vs 3.0", 8, 1)),
        ([1e6, 1.0, 2.0, 3.0], [1e6 + 0.5, 1.5, 2.0 + 1e-7, 3.0], {},
         (False, 0.5, "[1]: 1.0 vs 1.5", 4, 3)),
        ([[1.0, 2.0], [3.0, 4.0, 5.0]], [[1.0, 2.0], [3.0, 4.0, 6.0]], {},
         (False, 1.0, "[1][2]: 5.0 vs 6.0", 2, 1)),
        (["a"], ["a"], {}, (None, None, 'production prediction [0]: expected a number, got "a"', None, None)),
        ([1.0], [True], {}, (True, 0.0, None, 1, 1)),
        ([1.0, 2.0], [True, 2.5], {}, (False, 0.5, "[1]: 2.0 vs 2.5", 2, 1)),
        ([[1.0, None]], [[1.0, 2.0]], {}, (None, None, "production prediction [0][1]: expected a number, got null", None, None)),
        ({"a": 1}, {"a": 1}, {}, (None, None, 'production prediction: expected a number, got {"a":1}', None, None)),
        ([10**400], [1.0], {}, (None, None, "prediction has a number too large to compare", None, None)),
    ],
)  # fmt: skip
def test_numeric(
    prod: Any, shadow: Any, options: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    assert as_tuple(run("numeric", prod, shadow, **options)) == expected


def reference_close(x: float, y: float, rel: float, absolute: float) -> bool:
    if math.isnan(x) and math.isnan(y):
        return True
    return math.isclose(x, y, rel_tol=rel, abs_tol=absolute)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
tolerances = st.sampled_from([0.0, 1e-9, 1e-6, 1e-3, 0.1])


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.tuples(finite, finite), max_size=20),
    rel=tolerances,
    absolute=tolerances,
    rows=st.booleans(),
)
def test_numeric_agrees_exactly_when_isclose_does(
    values: list[tuple[float, float]], rel: float, absolute: float, rows: bool
) -> None:
    xs, ys = [x for x, _ in values], [y for _, y in values]
    prod, shadow = ([xs], [ys]) if rows else (xs, ys)
    verdict = run("numeric", prod, shadow, rel_tol=rel, abs_tol=absolute)
    assert verdict.agree == all(reference_close(x, y, rel, absolute) for x, y in values)
    assert verdict.diff_score == max((abs(x - y) for x, y in values), default=0.0)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=30), data=st.data())
def test_numeric_within_tolerance_agrees_and_outside_disagrees(
    values: list[float], data: st.DataObject
) -> None:
    absolute = 1e-3
    nudged = [v + data.draw(st.floats(-absolute / 2, absolute / 2)) for v in values]
    assert run("numeric", values, nudged, abs_tol=absolute, rel_tol=0.0).agree is True
    index = data.draw(st.integers(0, len(values) - 1))
    moved = list(values)
    moved[index] += data.draw(st.sampled_from([-1.0, 1.0])) * absolute * 3
    verdict = run("numeric", values, moved, abs_tol=absolute, rel_tol=0.0)
    assert (verdict.agree, verdict.batch_agree) == (False, len(values) - 1)
    assert verdict.detail is not None
    assert verdict.detail.startswith(f"[{index}]: ")


def test_numeric_limits_the_number_of_elements() -> None:
    rows = [[0.0] * 1001] * (MAX_ELEMENTS // 1000)
    verdict = run("numeric", rows, rows)
    assert verdict.agree is None
    assert verdict.detail == f"production prediction has 1001000 numbers, limit {MAX_ELEMENTS}"
    huge = [0.0] * (MAX_ELEMENTS + 1)
    assert run("numeric", huge, huge).detail == (
        f"batch of {MAX_ELEMENTS + 1} items is over the limit of {MAX_ELEMENTS}"
    )


# --- label ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prod", "shadow", "expected"),
    [
        ("cat", "cat", (True, 0.0, None, None, None)),
        ("cat", "dog", (False, 1.0, '"cat" vs "dog"', None, None)),
        (["cat", "dog", "cat"], ["cat", "cat", "cat"], (False, 1.0, '[1]: "dog" vs "cat"', 3, 2)),
        ([1, 0, 2], [1, 0, 2], (True, 0.0, None, 3, 3)),
        ([1, 0, 2], [1.0, 0.0, 2.0], (False, None, "batch size 3 vs not a batch", 3, None)),
        ([[0.1, 0.9], [0.8, 0.2]], [[0.3, 0.7], [0.4, 0.6]], (False, 1.0, "[1]: class 0 vs class 1", 2, 1)),
        ([0.1, 0.7, 0.2], [0.2, 0.5, 0.3], (True, 0.0, None, None, None)),
        ([0.1, 0.7, 0.2], [0.8, 0.1, 0.1], (False, 1.0, "class 1 vs class 0", None, None)),
        ([[0.5, 0.5]], [[0.5, 0.4]], (True, 0.0, None, 1, 1)),  # ties: the first maximum
        ({"cat": 0.7, "dog": 0.3}, "cat", (True, 0.0, None, None, None)),
        ([{"cat": 0.7, "dog": 0.3}], [{"cat": 0.2, "dog": 0.8}], (False, 1.0, '[0]: "cat" vs "dog"', 1, 0)),
        ([2, 1], [[0, 0, 1], [0, 1, 0]], (True, 0.0, None, 2, 2)),
        ([True], [1], (False, 1.0, "[0]: true vs 1", 1, 0)),
        ([True, False], [True, False], (True, 0.0, None, 2, 2)),
        ([1, "1"], [1, "1"], (True, 0.0, None, 2, 2)),
        (["1"], [1], (False, 1.0, '[0]: "1" vs 1', 1, 0)),
        (2.0, 2, (True, 0.0, None, None, None)),
        (0.93, 1, (None, None, "production prediction: expected a class label or a score vector, got 0.93", None, None)),
        ([None], [None], (None, None, "production prediction [0]: expected a class label or a score vector, got null", None, None)),
        ([[]], [[]], (None, None, "production prediction [0]: expected a class label or a score vector, got []", None, None)),
        (["a", "b"], ["a"], (False, None, "batch size 2 vs 1", 2, None)),
        # rows of width 1 (a classifier's [N, 1] output): the value is the class
        ([[3], [0]], [[3], [1]], (False, 1.0, "[1]: 0 vs 1", 2, 1)),
        ([[3], [0]], [[3], [0]], (True, 0.0, None, 2, 2)),
        ([[3]], [3], (True, 0.0, None, 1, 1)),
        ([["cat"]], [["dog"]], (False, 1.0, '[0]: "cat" vs "dog"', 1, 0)),
        ([[True]], [[1]], (False, 1.0, "[0]: true vs 1", 1, 0)),
        ([2.0], [3.0], (False, 1.0, "2.0 vs 3.0", None, None)),
        ([[2.0], [1]], [[2], [1.0]], (True, 0.0, None, 2, 2)),
        ([0.93], [0.2], (None, None, "production prediction: one score is not a class (kind: numeric compares it), got [0.93]", None, None)),
        ([[0.9], [0.8]], [[0.9], [0.8]], (None, None, "production prediction [0]: one score is not a class (kind: numeric compares it), got [0.9]", None, None)),
        ([[None]], [[None]], (None, None, "production prediction [0]: expected a class label or a score vector, got [null]", None, None)),
    ],
)  # fmt: skip
def test_label(prod: Any, shadow: Any, expected: tuple[Any, ...]) -> None:
    assert as_tuple(run("label", prod, shadow)) == expected


class_ids = st.lists(st.integers(0, 4) | st.booleans() | st.sampled_from(["a", "b"]), max_size=8)


@settings(max_examples=150, deadline=None)
@given(prod=class_ids, shadow=class_ids)
def test_rows_of_one_class_judge_as_the_classes_themselves(
    prod: list[Any], shadow: list[Any]
) -> None:
    flat = run("label", prod, shadow)
    rows = run("label", [[c] for c in prod], [[c] for c in shadow])
    assert as_tuple(rows) == as_tuple(flat)
    if len(prod) == len(shadow):
        same = [type(a) is type(b) and a == b for a, b in zip(prod, shadow, strict=True)]
        assert (rows.agree, rows.batch_agree) == (all(same), sum(same))
    if prod:
        assert pick([[c] for c in prod]) == pick(prod)


# --- probabilities ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prod", "shadow", "options", "agree", "detail", "batch"),
    [
        ([0.2, 0.8], [0.2, 0.8], {}, True, None, (None, None)),
        ([0.2, 0.8], [0.4, 0.6], {}, True, None, (None, None)),
        ([0.2, 0.8], [0.4, 0.6], {"max_js": 0.01}, False, "JS divergence 0.03485 > max_js 0.01", (None, None)),
        ([0.2, 0.8], [0.6, 0.4], {}, False, "top-1 1 vs 0 (JS 0.1245)", (None, None)),
        ([[0.2, 0.8], [1, 0]], [[0.3, 0.7], [0, 1]], {}, False, "[1]: top-1 0 vs 1 (JS 1)", (2, 1)),
        ({"cat": 0.9, "dog": 0.1}, {"dog": 0.1, "cat": 0.9}, {}, True, None, (None, None)),
        ({"cat": 0.9, "dog": 0.1}, {"cat": 0.4, "bird": 0.6}, {}, False, 'top-1 "cat" vs "bird" (JS 0.4212)', (None, None)),
        ([2, 8], [0.2, 0.8], {}, True, None, (None, None)),  # normalised
        ([0.2, 0.8], [0.2, 0.3, 0.5], {}, False, "2 classes vs 3", (None, None)),
        ([0.2, 0.8], {"a": 0.2, "b": 0.8}, {}, False, "an array of scores vs an object of scores", (None, None)),
        ([0.5, -0.5], [0.5, 0.5], {}, None, "production prediction: not a distribution (score -0.5)", (None, None)),
        ([0.0, 0.0], [0.5, 0.5], {}, None, "production prediction: not a distribution (scores sum to 0)", (None, None)),
        ([0.5, 0.5], [INF, 0.5], {}, None, "shadow prediction: not a distribution (score inf)", (None, None)),
        ([0.5, 0.5], [NAN, 0.5], {}, None, "shadow prediction: not a distribution (score nan)", (None, None)),
        ([], [], {}, None, "production prediction: expected a probability distribution, got []", (None, None)),
        ("a", "a", {}, None, 'production prediction: expected a probability distribution, got "a"', (None, None)),
        ([[0.5, 0.5]], [[0.5, 0.5], [1, 0]], {}, False, "batch size 1 vs 2", (1, None)),
    ],
)  # fmt: skip
def test_probabilities(
    prod: Any,
    shadow: Any,
    options: dict[str, Any],
    agree: bool | None,
    detail: str | None,
    batch: tuple[int | None, int | None],
) -> None:
    verdict = run("probabilities", prod, shadow, **options)
    assert (verdict.agree, verdict.detail, (verdict.batch_size, verdict.batch_agree)) == (
        agree,
        detail,
        batch,
    )
    if agree is not None:
        assert verdict.diff_score is None or 0.0 <= verdict.diff_score <= 1.0


distributions = st.integers(2, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 1e3), min_size=n, max_size=n).filter(lambda v: sum(v) > 1e-3),
        st.lists(st.floats(0, 1e3), min_size=n, max_size=n).filter(lambda v: sum(v) > 1e-3),
    )
)


@settings(max_examples=100, deadline=None)
@given(pair=distributions)
def test_jensen_shannon_matches_scipy(pair: tuple[list[float], list[float]]) -> None:
    p, q = ([v / sum(side) for v in side] for side in pair)
    expected = float(jensenshannon(p, q, base=2)) ** 2
    assert jensen_shannon(p, q) == pytest.approx(expected, abs=1e-9)
    verdict = run("probabilities", *pair)
    assert verdict.diff_score == pytest.approx(expected, abs=1e-9)


def test_jensen_shannon_bounds() -> None:
    assert jensen_shannon([1.0, 0.0], [0.0, 1.0]) == 1.0
    assert jensen_shannon([0.3, 0.7], [0.3, 0.7]) == 0.0
    assert 0.0 <= jensen_shannon([5e-324, 1.0], [0.0, 1.0]) < 1e-300


# --- ranking ----------------------------------------------------------------------------


def reference_rbo(a: list[Hashable], b: list[Hashable], p: float) -> float:
    """Webber et al. (2010) eq. 32, written out with set intersections."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    s, n = len(short), len(long)

    def overlap(d: int) -> int:
        return len(set(short[: min(d, s)]) & set(long[:d]))

    x_s, x_l = overlap(s), overlap(n)
    first = sum(overlap(d) / d * p**d for d in range(1, n + 1))
    second = sum(x_s * (d - s) / (s * d) * p**d for d in range(s + 1, n + 1))
    return (1 - p) / p * (first + second) + ((x_l - x_s) / n + x_s / s) * p**n


@settings(max_examples=150, deadline=None)
@given(
    a=st.lists(st.integers(0, 30), max_size=15, unique=True),
    b=st.lists(st.integers(0, 30), max_size=15, unique=True),
    p=st.sampled_from([0.5, 0.9, 0.98]),
)
def test_rbo_matches_the_formula(a: list[int], b: list[int], p: float) -> None:
    expected = min(1.0, max(0.0, reference_rbo(list(a), list(b), p)))
    assert rbo(list(a), list(b), p) == pytest.approx(expected, abs=1e-12)
    assert rbo(list(a), list(b), p) == pytest.approx(rbo(list(b), list(a), p), abs=1e-12)


@pytest.mark.parametrize(
    ("prod", "shadow", "options", "agree", "score", "detail"),
    [
        (["a", "b", "c"], ["a", "b", "c"], {}, True, 0.0, None),
        (["a", "b", "c"], ["b", "a", "c"], {}, True, pytest.approx(1 - rbo(["a", "b", "c"], ["b", "a", "c"], 0.9)), None),
        (["a", "b", "c", "d"], ["a", "b", "c", "x"], {}, False, pytest.approx(1 - rbo(["a", "b", "c", "d"], ["a", "b", "c", "x"], 0.9)),
         'top-10 overlap 0.75 < 1.0, first missing in shadow: "d" (RBO 0.818)'),
        (["a", "b", "c", "d"], ["a", "b", "c", "x"], {"min_overlap": 0.75}, True, pytest.approx(1 - 0.81775), None),
        (["a", "b", "c", "d"], ["a", "b", "x", "y"], {"top_k": 2}, True, 0.0, None),
        (["a", "b", "c"], ["x", "y", "z"], {}, False, 1.0, 'top-10 overlap 0 < 1.0, first missing in shadow: "a" (RBO 0)'),
        ([1, 2, 2, 3], [1, 2, 3], {}, True, 0.0, None),  # duplicates ignored
        ([], [], {}, True, 0.0, None),
        ([], [1], {}, False, 1.0, "top-10 overlap 0 < 1.0 (RBO 0)"),
        ([[1, 2], [3, 4]], [[1, 2], [4, 3]], {}, True, pytest.approx(1 - rbo([3, 4], [4, 3], 0.9)), None),
        ([[1, 2], [3, 4]], [[1, 2], [5, 3]], {}, False, pytest.approx(1 - rbo([3, 4], [5, 3], 0.9)),
         "[1]: top-10 overlap 0.5 < 1.0, first missing in shadow: 4 (RBO 0.45)"),
        ([[1, True]], [[1, 2]], {}, None, None, "production prediction [0]: expected a ranking of ids, got [1,true]"),
        ("abc", "abc", {}, None, None, 'production prediction: expected a ranking of ids, got "abc"'),
    ],
)  # fmt: skip
def test_ranking(
    prod: Any,
    shadow: Any,
    options: dict[str, Any],
    agree: bool | None,
    score: Any,
    detail: str | None,
) -> None:
    verdict = run("ranking", prod, shadow, **options)
    assert (verdict.agree, verdict.diff_score, verdict.detail) == (agree, score, detail)


# --- text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prod", "shadow", "options", "agree", "detail"),
    [
        ("Paris is the capital.", "Paris is the capital.", {}, True, None),
        ("Paris is  the\ncapital.", "Paris is the capital. ", {}, True, None),
        ("The capital of France is Paris, on the Seine.", "The capital of France is Paris, on the Seine!", {}, True, None),
        ("The capital of France is Paris.", "The capital of France is Paris!", {}, False,
         'similarity 0.774 < 0.8; first change at token 5: "Paris." vs "Paris!"'),
        ("The capital of France is Paris.", "Lyon is a city in France.", {}, False,
         'similarity 0.083 < 0.8; first change at token 0: "The" vs "Lyon"'),
        ("The capital of France is Paris.", "Lyon is a city in France.", {"min_similarity": 0.05}, True, None),
        ("yes", "no", {}, False, 'similarity 0.000 < 0.8; first change at token 0: "yes" vs "no"'),
        ("", "text", {}, False, 'similarity 0.000 < 0.8; first change at token 0: end vs "text"'),
        (None, "", {}, True, None),
        (["a b", "c d"], ["a b", "c e"], {}, False, '[1]: similarity 0.417 < 0.8; first change at token 1: "d" vs "e"'),
        ([1], ["1"], {}, None, "production prediction [0]: expected text, got 1"),
        ({"content": "x"}, "x", {}, None, 'production prediction: expected text, got {"content":"x"}'),
    ],
)  # fmt: skip
def test_text(
    prod: Any, shadow: Any, options: dict[str, Any], agree: bool | None, detail: str | None
) -> None:
    verdict = run("text", prod, shadow, **options)
    assert (verdict.agree, verdict.detail) == (agree, detail)
    if agree is not None:
        assert verdict.diff_score is not None
        assert 0.0 <= verdict.diff_score <= 1.0


def test_text_similarity_is_one_only_for_identical_token_sequences() -> None:
    # Same unigrams and bigrams, different order: still below 1.
    a, b = ["a", "b", "a", "c", "a"], ["a", "c", "a", "b", "a"]
    assert similarity(a, b) < 1.0
    assert similarity(a, a) == 1.0
    assert similarity(["x"], []) == 0.0


def test_text_similarity_stays_linear_on_long_answers() -> None:
    words = [f"w{i % 150}" for i in range(20_000)]
    edited = [w if i % 20 else "zz" for i, w in enumerate(words)]
    assert 0.85 < similarity(words, edited) < 1.0  # difflib takes seconds here; this, ms


@settings(max_examples=100, deadline=None)
@given(
    a=st.lists(st.sampled_from("abcde"), max_size=12),
    b=st.lists(st.sampled_from("abcde"), max_size=12),
)
def test_text_similarity_is_symmetric_and_bounded(a: list[str], b: list[str]) -> None:
    score = similarity(a, b)
    assert 0.0 <= score <= 1.0
    assert score == similarity(b, a)
    assert (score == 1.0) == (a == b)


def test_text_limits_the_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shadowproxy.compare.text.MAX_TEXT_CHARS", 10)
    verdict = run("text", "x" * 11, "y")
    assert verdict.detail == "production prediction: text of 11 characters, limit 10"


# --- auto -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("cat", "label"),
        ("Paris is the capital of France.", "text"),
        ("x" * 33, "text"),
        ("", "text"),
        (True, "label"),
        (3, "label"),
        (2.5, "numeric"),
        (None, "exact"),
        ({"a": 1}, "exact"),
        ({"cat": 0.7, "dog": 0.3}, "probabilities"),
        ({"cat": 0.7, "dog": 0.7}, "exact"),
        ([], "exact"),
        (["cat", "dog"], "label"),
        (["cat", "a dog"], "text"),
        (["an answer", None], "text"),
        ([None], "text"),
        ([1, 0, 2], "label"),
        ([True, False], "label"),
        ([1, True], "label"),
        ([0.2, 0.8], "probabilities"),
        ([0.2, 0.7], "numeric"),
        ([1.0], "numeric"),
        ([1, 2.5, 3], "numeric"),
        ([[0.1, 0.9], [0.5, 0.5]], "probabilities"),
        ([[0.1, 0.9], [0.5, 0.6]], "numeric"),
        ([[1.0], [2.0]], "numeric"),
        ([[3], [0]], "label"),
        ([[True], [False]], "label"),
        ([["setosa"], ["virginica"]], "label"),
        ([["a long answer"]], "exact"),
        ([[1], [2.5]], "numeric"),
        ([[None]], "exact"),
        ([[[3]]], "exact"),
        ([[1, 2], [3, 4]], "numeric"),
        ([[0.1, 0.9], [1.5, -0.5]], "numeric"),
        ([[0.1, 0.9], ["a"]], "exact"),
        ([[], []], "exact"),
        ([{"a": 0.5, "b": 0.5}], "probabilities"),
        ([{"label": "a", "score": 0.9}], "exact"),
        ([1, "a"], "exact"),
        ([[0.5, NAN], [0.5, 0.5]], "numeric"),
        ([NAN, 0.5, INF], "numeric"),
    ],
)
def test_auto_picks_by_production_types(value: Any, kind: str) -> None:
    assert pick(value) == kind


def test_auto_reports_what_it_picked() -> None:
    result = compare(CompareConfig(prediction="kserve-v1"), pair_of(
        b'{"predictions": [[0.1, 0.9]]}', b'{"predictions": [[0.2, 0.8]]}'))  # fmt: skip
    assert (result.comparator, result.agree) == ("auto:probabilities", True)
    assert result.diff_score == pytest.approx(
        float(jensenshannon([0.1, 0.9], [0.2, 0.8], base=2)) ** 2
    )


# --- properties over arbitrary JSON -----------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
wild_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
numeric_like = st.recursive(
    st.floats(0, 1) | st.integers(0, 3),
    lambda inner: st.lists(inner, min_size=1, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(value=json_values | numeric_like)
def test_any_value_agrees_with_itself_under_exact_and_auto(value: Any) -> None:
    twin = orjson.loads(orjson.dumps(value))
    for kind in ("exact", "auto"):
        verdict = run(kind, value, twin)
        assert verdict.agree is True, (kind, verdict)
        assert verdict.diff_score == 0.0
    body = orjson.dumps(value)
    for config in (CompareConfig(), CompareConfig(kind="exact")):
        assert compare(config, pair_of(body, body)).agree is True


@settings(max_examples=150, deadline=None)
@given(a=json_values, b=json_values, twin=st.booleans())
def test_exact_is_symmetric_and_is_json_equality(a: Any, b: Any, twin: bool) -> None:
    if twin:
        b = json.loads(json.dumps(a))  # an equal value; json reads 1.0 back as 1.0, ints as ints
    forward, backward = run("exact", a, b), run("exact", b, a)
    assert (forward.agree, forward.diff_score) == (backward.agree, backward.diff_score)
    assert forward.agree == (_json_normal(a) == _json_normal(b))


def _json_normal(value: Any) -> Any:
    """A reference for JSON equality: booleans, null and strings tagged, numbers by value."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, list):
        return [_json_normal(item) for item in value]
    return {key: _json_normal(item) for key, item in value.items()}


@settings(max_examples=150, deadline=None)
@given(a=wild_values | numeric_like, b=wild_values | numeric_like, data=st.data())
def test_no_comparator_raises_on_arbitrary_json(a: Any, b: Any, data: st.DataObject) -> None:
    options = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "max_js": st.floats(0, 1),
                "top_k": st.integers(1, 5),
                "min_overlap": st.floats(0, 1),
                "min_similarity": st.floats(0, 1),
                "rel_tol": st.floats(0, 1),
                "abs_tol": st.floats(0, 10),
            },
        )
    )
    config = CompareConfig(**options)
    for kind in KINDS:
        concrete, name = resolve(kind, a)
        verdict = judge(concrete, a, b, config)
        assert verdict.agree in (True, False, None), name
        if verdict.agree is None:
            assert verdict.detail
        if verdict.agree is True:
            assert verdict.detail is None
        if verdict.batch_agree is not None:
            assert verdict.batch_size is not None
            assert 0 <= verdict.batch_agree <= verdict.batch_size


@settings(max_examples=100, deadline=None)
@given(a=wild_values, b=wild_values)
def test_whole_pipeline_never_raises_on_bodies_with_nan_and_big_numbers(a: Any, b: Any) -> None:
    prod, shadow = json.dumps(a).encode(), json.dumps(b).encode()
    for kind in KINDS:
        result = compare(CompareConfig(kind=kind), pair_of(prod, shadow))
        assert result.agree in (True, False, None)


def test_comparators_do_not_mutate_their_inputs() -> None:
    prod = {"predictions": [[0.1, 0.9], [0.6, 0.4]], "id": "a"}
    shadow = {"predictions": [[0.2, 0.8], [0.3, 0.7]], "id": "b"}
    before = copy.deepcopy((prod, shadow))
    for kind in KINDS:
        run(kind, prod["predictions"], shadow["predictions"])
    assert (prod, shadow) == before


def test_a_string_is_not_an_empty_row_of_numbers() -> None:
    """``""`` has a length, like ``[]``; the fast path must not take it for a row."""
    forward = judge("numeric", [[]], [""], CompareConfig())
    backward = judge("numeric", [""], [[]], CompareConfig())
    assert forward.agree is None and backward.agree is None
    assert "expected a number" in (forward.detail or "")
