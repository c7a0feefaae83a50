"""``probabilities`` (class distributions) and ``ranking`` (ordered ids): score vectors.

probabilities
    An item is a distribution: an array of scores (classes by position) or an object of
    ``class: score`` (classes by key, a missing class scores 0; true/false count as
    1/0). Scores are normalised
    to sum 1, so float32 rounding does not matter; negative, non-finite or all-zero
    scores make the pair incomparable. ``diff_score`` is the Jensen-Shannon divergence
    in bits, in [0, 1]; items agree when their top-1 class is the same (on ties the
    first by position in an array, by name in an object: key order must not decide)
    and, when ``max_js`` is set, the divergence is at most ``max_js``.

ranking
    An item is an array of ids (strings or numbers) best first; duplicates after the
    first occurrence are ignored and only the first ``top_k`` ids count. Items agree
    when the top-k overlap ``|A ∩ B| / max(|A|, |B|)`` is at least ``min_overlap``
    (default 1: the same top-k set, in any order). ``diff_score`` is ``1 - RBO``:
    rank-biased overlap (Webber et al. 2010, extrapolated form) with persistence
    ``rbo_p``, which weighs the top ranks most and also sees order changes inside
    an equal set; 0 only for identical top-k lists.

A flat array is one item for both; an array of arrays (or of objects) is a batch.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from functools import partial
from itertools import chain
from typing import Any

from shadowproxy.compare.spec import CompareConfig
from shadowproxy.compare.verdict import (
    Incomparable,
    Item,
    Verdict,
    judge_items,
    show,
)

_CONTAINERS = frozenset({list, dict})
_NUMBERS = frozenset({int, float, bool})  # true/false count as 1/0, as in numeric
_IDS = frozenset({str, int, float})


def is_flat(value: Any) -> bool:
    """An array with no arrays or objects in it: one distribution or one ranking."""
    return isinstance(value, list) and not _CONTAINERS.intersection(map(type, value))


def probabilities(prod: Any, shadow: Any, config: CompareConfig) -> Verdict:
    return judge_items(prod, shadow, partial(_distribution_item, config=config), single=is_flat)


def _distribution_item(x: Any, y: Any, where: str, config: CompareConfig) -> Item:
    keys_x, px = _distribution(x, "production", where)
    keys_y, py = _distribution(y, "shadow", where)
    if (keys_x is None) != (keys_y is None):
        return Item(False, None, "an array of scores vs an object of scores")
    top_x: Hashable
    top_y: Hashable
    if keys_x is None or keys_y is None:
        if len(px) != len(py):
            return Item(False, None, f"{len(px)} classes vs {len(py)}")
        top_x, top_y = _argmax(px), _argmax(py)
    else:
        classes = sorted(set(chain(keys_x, keys_y)))
        px, py = _align(keys_x, px, classes), _align(keys_y, py, classes)
        top_x, top_y = classes[_argmax(px)], classes[_argmax(py)]
    divergence = jensen_shannon(px, py)
    if top_x != top_y:
        detail = f"top-1 {show(top_x)} vs {show(top_y)} (JS {divergence:.4g})"
        return Item(False, divergence, detail)
    if config.max_js is not None and divergence > config.max_js:
        return Item(False, divergence, f"JS divergence {divergence:.4g} > max_js {config.max_js}")
    return Item(True, divergence)


def _distribution(value: Any, side: str, where: str) -> tuple[list[str] | None, list[float]]:
    """``(classes or None for positional, scores normalised to sum 1)``."""
    keys: list[str] | None = None
    if isinstance(value, dict):
        keys, scores = list(value), list(value.values())
    elif isinstance(value, list):
        scores = value
    else:
        scores = []
    at = f" {where}" if where else ""
    if not scores or not set(map(type, scores)) <= _NUMBERS:
        raise Incomparable(
            f"{side} prediction{at}: expected a probability distribution, got {show(value)}"
        )
    if not all(map(math.isfinite, scores)) or min(scores) < 0:
        bad = next(s for s in scores if not math.isfinite(s) or s < 0)
        raise Incomparable(f"{side} prediction{at}: not a distribution (score {show(bad)})")
    total = math.fsum(scores)
    if total <= 0:
        raise Incomparable(f"{side} prediction{at}: not a distribution (scores sum to 0)")
    return keys, [score / total for score in scores]


def _align(keys: list[str], scores: list[float], classes: list[str]) -> list[float]:
    by_class = dict(zip(keys, scores, strict=True))
    return [by_class.get(name, 0.0) for name in classes]


def _argmax(scores: list[float]) -> int:
    return scores.index(max(scores))


def jensen_shannon(p: list[float], q: list[float]) -> float:
    """JS divergence in bits of two distributions over the same classes, in [0, 1]."""
    total = 0.0
    for a, b in zip(p, q, strict=True):
        # a * log2(a / m) with m = (a + b) / 2, written so a tiny m cannot underflow to 0.
        if a > 0:
            total += a * math.log2(2 * a / (a + b))
        if b > 0:
            total += b * math.log2(2 * b / (a + b))
    return min(1.0, max(0.0, total / 2))


# --- ranking ----------------------------------------------------------------------


def ranking(prod: Any, shadow: Any, config: CompareConfig) -> Verdict:
    return judge_items(prod, shadow, partial(_ranking_item, config=config), single=is_flat)


def _ranking_item(x: Any, y: Any, where: str, config: CompareConfig) -> Item:
    a = _top(x, "production", where, config.top_k)
    b = _top(y, "shadow", where, config.top_k)
    if a == b:
        return Item(True, 0.0)
    shared = set(a).intersection(b)
    overlap = len(shared) / max(len(a), len(b))
    score = 1.0 - rbo(a, b, config.rbo_p)
    if overlap >= config.min_overlap:
        return Item(True, score)
    lacks = next((rank for rank in a if rank not in shared), None)
    missing = f", first missing in shadow: {show(lacks)}" if lacks is not None else ""
    return Item(
        False,
        score,
        f"top-{config.top_k} overlap {overlap:.3g} < {config.min_overlap}{missing} "
        f"(RBO {1.0 - score:.3g})",
    )


_NAN = math.nan
"""The one NaN object every NaN id becomes: NaN is not equal to itself, but sets and
lists match the same object, so a NaN ranked by both models counts as shared."""


def _top(value: Any, side: str, where: str, k: int) -> list[Hashable]:
    """The first ``k`` distinct ids."""
    types = set(map(type, value)) if isinstance(value, list) else None
    if types is None or not types <= _IDS:
        at = f" {where}" if where else ""
        raise Incomparable(f"{side} prediction{at}: expected a ranking of ids, got {show(value)}")
    if float in types:
        value = [_NAN if item != item else item for item in value]
    top: list[Hashable] = list(dict.fromkeys(value))[:k]
    return top


def rbo(a: list[Hashable], b: list[Hashable], p: float) -> float:
    """Extrapolated rank-biased overlap of two lists of distinct ids (1 = identical)."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    s, n = len(short), len(long)
    seen_short: set[Hashable] = set()
    seen_long: set[Hashable] = set()
    overlap = 0
    overlap_at_s = 0
    weighted = 0.0
    for depth in range(1, n + 1):
        item_long = long[depth - 1]
        if depth <= s:
            item_short = short[depth - 1]
            if item_short == item_long:
                overlap += 1
            else:
                overlap += (item_short in seen_long) + (item_long in seen_short)
            seen_short.add(item_short)
        elif item_long in seen_short:
            overlap += 1
        seen_long.add(item_long)
        if depth == s:
            overlap_at_s = overlap
        weighted += overlap / depth * p**depth
        if depth > s:
            weighted += overlap_at_s * (depth - s) / (s * depth) * p**depth
    tail = ((overlap - overlap_at_s) / n + overlap_at_s / s) * p**n
    return min(1.0, max(0.0, (1 - p) / p * weighted + tail))
