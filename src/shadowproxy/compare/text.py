"""``text``: generated text (LLM answers), by exact match and a bounded-cost similarity.

Texts are compared as sequences of whitespace-separated tokens (``str.split``: six
times faster than a word/punctuation regex, and whitespace or line wrapping is never
a difference; punctuation stays on its word). ``similarity`` is in [0, 1]: 1 for
identical token sequences, else the mean of the Dice coefficients of the token multisets
and of the token-bigram multisets (start and end marked), i.e. the average of
ROUGE-1 and ROUGE-2 F1. Unigrams see shared vocabulary, bigrams see word order, and
both are counted in linear time with ``collections.Counter``. difflib's
``SequenceMatcher.ratio`` was the first idea: it took 40-150 ms on a pair of
2,000-token answers, which a comparator running on every sampled pair cannot afford.

Items agree when ``similarity >= min_similarity``; ``diff_score = 1 - similarity``.
``null`` counts as the empty text (a chat answer that only calls tools).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import partial
from itertools import pairwise
from typing import Any

from shadowproxy.compare.spec import MAX_TEXT_CHARS, CompareConfig
from shadowproxy.compare.verdict import (
    Incomparable,
    Item,
    Verdict,
    judge_items,
    show,
)

_START, _END = "\x02", "\x03"
_BELOW_ONE = 1.0 - 1e-9
"""Different sequences can share every unigram and bigram; they still score below 1."""


def text(prod: Any, shadow: Any, config: CompareConfig) -> Verdict:
    return judge_items(prod, shadow, partial(_item, config=config))


def _item(x: Any, y: Any, where: str, config: CompareConfig) -> Item:
    a, b = _text(x, "production", where), _text(y, "shadow", where)
    if a == b:
        return Item(True, 0.0)
    tokens_a, tokens_b = a.split(), b.split()
    score = similarity(tokens_a, tokens_b)
    if score >= config.min_similarity:
        return Item(True, 1.0 - score)
    return Item(
        False,
        1.0 - score,
        f"similarity {score:.3f} < {config.min_similarity}; {_first_change(tokens_a, tokens_b)}",
    )


def _text(value: Any, side: str, where: str) -> str:
    if value is None:
        return ""
    at = f" {where}" if where else ""
    if not isinstance(value, str):
        raise Incomparable(f"{side} prediction{at}: expected text, got {show(value)}")
    if len(value) > MAX_TEXT_CHARS:
        raise Incomparable(
            f"{side} prediction{at}: text of {len(value)} characters, limit {MAX_TEXT_CHARS}"
        )
    return value


def similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """Mean of the unigram and bigram Dice coefficients; 1 only for equal sequences."""
    if list(a) == list(b):
        return 1.0
    if not a or not b:
        return 0.0
    unigrams = _dice(Counter(a), Counter(b))
    bigrams = _dice(Counter(_pairs(a)), Counter(_pairs(b)))
    return min((unigrams + bigrams) / 2, _BELOW_ONE)


def _pairs(tokens: Sequence[str]) -> list[tuple[str, str]]:
    marked = [_START, *tokens, _END]
    return list(pairwise(marked))


def _dice(a: Counter[Any], b: Counter[Any]) -> float:
    shared = sum((a & b).values())
    return 2 * shared / (a.total() + b.total())


def _first_change(a: Sequence[str], b: Sequence[str]) -> str:
    """Where the token sequences part, e.g. ``first change at token 12: 'Paris' vs 'Lyon'``."""
    index = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    left = show(a[index]) if index < len(a) else "end"
    right = show(b[index]) if index < len(b) else "end"
    return f"first change at token {index}: {left} vs {right}"
