"""What a comparator concludes, and the batch rule every comparator shares.

A prediction that is a JSON array is a *batch*: one item per input row (the KServe v1,
TF Serving and MLflow convention, and what a ``[*]`` path yields). Items are compared
pairwise; the pair agrees when every item agrees, ``diff_score`` is the largest item
score (one badly wrong row must not be averaged away: ``batch_agree`` / ``batch_size``
give the rate) and ``detail`` names the first item that disagrees, e.g.
``[3]: 0.42 vs 0.51``. Batches of different sizes disagree without a score.

``Incomparable`` is how the pure code below says "cannot judge this pair" from deep in
a walk; it never leaves the package: the entry points turn it into a ``Verdict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shadowproxy.compare.spec import MAX_ELEMENTS

_SHOW_CHARS = 40
DETAIL_CHARS = 240


class Incomparable(Exception):
    """Why a pair cannot be judged (internal: caught at the package's entry points)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Verdict:
    agree: bool | None
    """None when incomparable."""
    diff_score: float | None
    detail: str | None
    """None when the items agree; else the first difference, or why incomparable."""
    batch_size: int | None = None
    batch_agree: int | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One item's result, before the batch rule combines them."""

    agree: bool
    score: float | None
    detail: str | None = None
    path: str = ""
    """Where inside the item the first difference is (``label``, ``[2]``)."""


def incomparable(reason: str) -> Verdict:
    return Verdict(agree=None, diff_score=None, detail=clip(reason))


def identical(batch_size: int | None) -> Verdict:
    return Verdict(True, 0.0, None, batch_size, batch_size)


def clip(text: str, limit: int = DETAIL_CHARS) -> str:
    """Details end up in every recorded row: keep them short."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show(value: Any) -> str:
    """A short rendering of a JSON value for a detail (``0.42``, ``"cat"``, ``[1,2,…``)."""
    if isinstance(value, float) and not math.isfinite(value):
        text = repr(value)
    else:
        try:
            text = orjson.dumps(value).decode()
        except (orjson.JSONEncodeError, TypeError):
            text = repr(value)
    return clip(text, _SHOW_CHARS)


def at(path: str, detail: str) -> str:
    """Prefix a detail with where it happened (``[3]``, ``[3].label``); root stays bare."""
    return f"{path}: {detail}" if path else detail


def index_path(index: int, rest: str = "") -> str:
    """``[3]``, ``[3][1]``, ``[3].label``: an item index joined to a path inside it."""
    if rest.startswith("[") or not rest:
        return f"[{index}]{rest}"
    return f"[{index}].{rest}"


def split_batch(value: Any, single_item: bool = False) -> tuple[list[Any], bool]:
    """``(items, is_batch)``: an array is a batch unless the comparator says the whole
    array is one item (a score vector, a distribution, a ranking)."""
    if isinstance(value, list) and not single_item:
        if len(value) > MAX_ELEMENTS:
            raise Incomparable(f"batch of {len(value)} items is over the limit of {MAX_ELEMENTS}")
        return value, True
    return [value], False


def pair_batches(
    prod: Any, shadow: Any, single: Callable[[Any], bool] | None = None
) -> tuple[list[Any], list[Any], bool] | Verdict:
    """Both sides as item lists ``(prod_items, shadow_items, is_batch)``, or the verdict
    when their batch sizes differ. ``single`` says when an array is one item."""
    p_items, p_batch = split_batch(prod, single is not None and single(prod))
    s_items, s_batch = split_batch(shadow, single is not None and single(shadow))
    if p_batch != s_batch or len(p_items) != len(s_items):
        return batch_size_mismatch(p_items if p_batch else None, s_items if s_batch else None)
    return p_items, s_items, p_batch


def judge_items(
    prod: Any,
    shadow: Any,
    judge_item: Callable[[Any, Any, str], Item],
    single: Callable[[Any], bool] | None = None,
) -> Verdict:
    """Pair both sides into items, judge each (``judge_item(x, y, where)``, ``where`` the
    item's path in a batch) and apply the batch rule: every per-item comparator's shape."""
    pairing = pair_batches(prod, shadow, single=single)
    if isinstance(pairing, Verdict):
        return pairing
    p_items, s_items, is_batch = pairing
    items = [
        judge_item(x, y, index_path(index) if is_batch else "")
        for index, (x, y) in enumerate(zip(p_items, s_items, strict=True))
    ]
    return combine(items, is_batch)


def batch_size_mismatch(prod: Sequence[Any] | None, shadow: Sequence[Any] | None) -> Verdict:
    """Both answers are valid but not the same shape: a disagreement, with no score."""
    size = len(prod) if prod is not None else None

    def describe(items: Sequence[Any] | None) -> str:
        return "not a batch" if items is None else f"{len(items)}"

    return Verdict(False, None, f"batch size {describe(prod)} vs {describe(shadow)}", size, None)


def combine(items: Sequence[Item], is_batch: bool) -> Verdict:
    """The batch rule: agree iff every item agrees; score = the largest item score."""
    scores = [item.score for item in items if item.score is not None]
    score = max(scores) if scores else (None if items else 0.0)
    agreeing = sum(1 for item in items if item.agree)
    first = next((i for i, item in enumerate(items) if not item.agree), None)
    detail = None
    if first is not None:
        item = items[first]
        where = index_path(first, item.path) if is_batch else item.path
        detail = clip(at(where, item.detail or "differs"))
    if not is_batch:
        return Verdict(first is None, score, detail)
    return Verdict(first is None, score, detail, len(items), agreeing)
