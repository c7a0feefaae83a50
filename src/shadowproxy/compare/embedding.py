"""``embedding``: vectors compared by cosine similarity (embedding models).

An item is one embedding: an array of numbers, or a base64 string of little-endian
float32 values, which is what OpenAI's embeddings endpoint returns for
``encoding_format: "base64"`` (the openai SDK asks for it by default) and what
compatible servers copy. Both forms decode to the same vector, so a base64 answer
compares with a float one. A flat array of numbers is one item; an array of strings or
of arrays is a batch, compared item by item (item i with item i) under the batch rule.

Items agree when ``cosine >= min_cosine``; ``diff_score`` is ``1 - cosine``, in [0, 2].
Everything per element runs in C (``math.hypot`` for norms, ``sum(map(mul, x, y))`` for
the dot product, vectors as lists of floats): about 0.1 ms per pair of 1536-dimension
vectors, 0.3 ms with base64 decoding (median on a loaded 2-core machine). Norms far
from 1 (below 1e-100 or above 1e100, where products would underflow or overflow a
float) are first scaled by the largest magnitude, which keeps the cosine.
Vectors of different dimensions disagree without a score. What has no cosine is a
reason, never a crash: base64 that does not decode or is not whole float32 values, an
empty or all-zero vector, NaN or infinity.
"""

from __future__ import annotations

import binascii
import math
import sys
from array import array
from collections.abc import Sequence
from operator import mul
from typing import Any

from shadowproxy.compare.spec import MAX_ELEMENTS, CompareConfig
from shadowproxy.compare.verdict import (
    Incomparable,
    Item,
    Verdict,
    combine,
    index_path,
    pair_batches,
    show,
)

Vector = Sequence[float]
_NUMBERS = frozenset({int, float})
FLOAT32_BYTES = 4


def is_vector(value: Any) -> bool:
    """An array that starts with a number: one embedding, not a batch (the rest is
    checked as its norm is computed)."""
    return type(value) is list and bool(value) and type(value[0]) in _NUMBERS


def embedding(prod: Any, shadow: Any, config: CompareConfig) -> Verdict:
    pairing = pair_batches(prod, shadow, single=is_vector)
    if isinstance(pairing, Verdict):
        return pairing
    p_items, s_items, is_batch = pairing
    xs = _vectors(p_items, "production", is_batch)
    ys = _vectors(s_items, "shadow", is_batch)
    items = [_item(x, y, config) for x, y in zip(xs, ys, strict=True)]
    return combine(items, is_batch)


def _vectors(items: list[Any], side: str, is_batch: bool) -> list[tuple[Vector, float]]:
    """Every item decoded and checked, with its norm; the side's count of values is
    bounded."""
    vectors: list[tuple[Vector, float]] = []
    total = 0
    for index, item in enumerate(items):
        where = index_path(index) if is_batch else ""
        vector = decode_vector(item, side, where)
        total += len(vector)
        if total > MAX_ELEMENTS:
            raise Incomparable(f"{side} prediction has over {MAX_ELEMENTS} numbers")
        at = f" {where}" if where else ""
        vectors.append(_with_norm(vector, f"{side} embedding{at}"))
    return vectors


def decode_vector(value: Any, side: str, where: str = "") -> Vector:
    """One embedding as numbers: a base64 float32 string decoded, an array checked."""
    at = f" {where}" if where else ""
    if type(value) is str:
        return _from_base64(value, f"{side} embedding{at}")
    if not is_vector(value):
        raise Incomparable(
            f"{side} prediction{at}: expected an embedding (an array of numbers or base64 "
            f"float32), got {show(value)}"
        )
    vector: Vector = value
    return vector


def _from_base64(text: str, what: str) -> Vector:
    if len(text) > 4 * ((MAX_ELEMENTS * FLOAT32_BYTES + 2) // 3):
        raise Incomparable(f"{what}: base64 of {len(text)} characters, over {MAX_ELEMENTS} numbers")
    if len(text) % 4:
        raise Incomparable(f"{what}: base64 of {len(text)} characters (not a multiple of 4)")
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII character
        raise Incomparable(f"{what}: not base64 ({exc})") from None
    if len(raw) % FLOAT32_BYTES:
        raise Incomparable(f"{what}: {len(raw)} bytes, not whole float32 values (4 bytes each)")
    values = array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()  # C-level math reads a list of floats 3x faster than an array


def encode_vector(values: Vector) -> str:
    """Numbers as base64 of little-endian float32, as OpenAI's ``encoding_format: base64``."""
    packed = array("f", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return binascii.b2a_base64(packed.tobytes(), newline=False).decode("ascii")


def _item(x: tuple[Vector, float], y: tuple[Vector, float], config: CompareConfig) -> Item:
    (xs, x_norm), (ys, y_norm) = x, y
    if len(xs) != len(ys):
        return Item(False, None, f"{len(xs)} dimensions vs {len(ys)}")
    score = 0.0 if xs == ys else cosine_distance(xs, x_norm, ys, y_norm)
    cos = 1.0 - score
    if cos >= config.min_cosine:
        return Item(True, score)
    return Item(False, score, f"cosine {cos:.6g} < min_cosine {config.min_cosine}")


def cosine_distance(x: Vector, x_norm: float, y: Vector, y_norm: float) -> float:
    """``1 - cosine`` of two vectors of one dimension with norms in ``NORMS``, in [0, 2]."""
    dot: float = sum(map(mul, x, y))
    cos = max(-1.0, min(1.0, dot / (x_norm * y_norm)))  # symmetric; stays within floats
    return 1.0 - cos


NORMS = (1e-100, 1e100)
"""Norms whose vectors are used as they are: the products of their values stay floats."""


def _with_norm(vector: Vector, what: str) -> tuple[Vector, float]:
    """``vector`` and its norm, scaled into ``NORMS`` if need be; or ``Incomparable``
    when it has no cosine (NaN, infinity, empty, all zeros). One C-level pass when fine."""
    try:
        norm = math.hypot(*vector)
    except TypeError:  # a string, null, array or object among the numbers
        other = next(value for value in vector if type(value) not in _NUMBERS)
        raise Incomparable(f"{what}: expected numbers, got {show(other)}") from None
    if NORMS[0] <= norm <= NORMS[1]:
        return vector, norm
    bad = next((i for i, value in enumerate(vector) if not math.isfinite(value)), None)
    if bad is not None:
        raise Incomparable(f"{what} has {show(vector[bad])} at [{bad}]")
    if not vector:
        raise Incomparable(f"{what} is empty")
    if norm == 0:
        raise Incomparable(f"{what} is all zeros (no direction, so no cosine)")
    largest = max(map(abs, vector))
    scaled = [value / largest for value in vector]
    return scaled, math.hypot(*scaled)
