"""``label``: did both models pick the same class? (classifiers)

An item is a class label (a string, an integer, or an integral float such as ``2.0``)
or a score vector whose class is its argmax: an array of numbers (the class is the
index of the largest score, the first on ties) or an object of ``label: score`` (the
class is the key of the largest score, the first by name on ties: a JSON object has no
order, so its keys' order must not decide). A top-level array is a batch of items,
except an array of numbers with at least one float, which is one score vector
(``[0.1, 0.7, 0.2]`` is one answer, ``[2, 0, 1]`` is three). ``true``/``false`` are
labels of their own, never ``1``/``0``. An array of one value is that value
(``[3]``, ``["cat"]``, ``[2.0]``): a row of width 1, as TF Serving, KServe v1 and
MLServer send a classifier's class ids (``[[3], [0]]``), names a class, and the argmax of
one score would always be 0, so every pair would agree. One non-integral score
(``[0.93]``) names no class: the pair is incomparable.

``diff_score`` is 0 when every item has the same class, else 1 (the batch rule takes the
largest item score); ``batch_agree`` counts the items with the same class.
"""

from __future__ import annotations

from collections.abc import Hashable
from operator import eq
from typing import Any

from shadowproxy.compare.spec import MAX_ELEMENTS, CompareConfig
from shadowproxy.compare.verdict import Incomparable, Verdict, index_path, pair_batches, show

_NUMBERS = frozenset({int, float})
_SCORES = frozenset({int, float, bool})
_LABELS = frozenset({str, int, float, bool})


def label(prod: Any, shadow: Any, config: CompareConfig) -> Verdict:
    pairing = pair_batches(prod, shadow, single=is_score_vector)
    if isinstance(pairing, Verdict):
        return pairing
    p_items, s_items, is_batch = pairing
    p_keys = _classes(p_items, "production", is_batch)
    s_keys = _classes(s_items, "shadow", is_batch)
    same = list(map(eq, p_keys, s_keys))
    agreeing = sum(same)
    batch = len(same) if is_batch else None
    if agreeing == len(same):
        return Verdict(True, 0.0, None, batch, batch)
    first = same.index(False)
    text = f"{_show(p_items[first], p_keys[first])} vs {_show(s_items[first], s_keys[first])}"
    detail = f"{index_path(first)}: {text}" if is_batch else text
    return Verdict(False, 1.0, detail, batch, agreeing if is_batch else None)


def is_score_vector(value: Any) -> bool:
    """A non-empty array of numbers with at least one float: one answer's scores."""
    if not isinstance(value, list) or not value or type(value[0]) not in _NUMBERS:
        return False  # decided by the first item for a batch of labels or of rows
    types = set(map(type, value))
    return types <= _NUMBERS and float in types


def _classes(items: list[Any], side: str, is_batch: bool) -> list[Hashable]:
    """One comparable class per item; homogeneous batches take a C-level path."""
    if _all_strings(items):
        return items
    types = set(map(type, items))
    if types == {int}:
        return items
    if types == {list} and min(map(len, items), default=0) > 1:
        size = sum(map(len, items))
        if size > MAX_ELEMENTS:
            raise Incomparable(f"{side} prediction has {size} scores, limit {MAX_ELEMENTS}")
        if _all_numbers(items):
            return list(map(list.index, items, map(max, items)))  # argmax, all in C
    return [
        _class(item, side, index_path(index) if is_batch else "")
        for index, item in enumerate(items)
    ]


def _all_strings(items: list[Any]) -> bool:
    """``str.join`` checks every item is a string at C speed (a type scan costs 3x more)."""
    if not items or type(items[0]) is not str:
        return False
    try:
        "".join(items)
    except TypeError:
        return False
    return True


def _all_numbers(rows: list[list[Any]]) -> bool:
    """Every score is a number (or a boolean): ``sum`` raises on anything else."""
    try:
        sum(map(sum, rows))
    except TypeError:
        return False
    return True


def _class(item: Any, side: str, where: str) -> Hashable:
    kind = type(item)
    if kind is str or kind is int:
        same: Hashable = item
        return same
    if kind is bool:
        return ("bool", item)  # never equal to 1 or 0
    if kind is float and item.is_integer():
        return int(item)
    if kind is list and len(item) == 1 and type(item[0]) in _LABELS:
        return _one(item, side, where)
    if kind is list and item and set(map(type, item)) <= _SCORES:
        return _argmax(item)
    if kind is dict and item and set(map(type, item.values())) <= _SCORES:
        best: str = max(sorted(item), key=item.__getitem__)
        return best
    at = f" {where}" if where else ""
    raise Incomparable(
        f"{side} prediction{at}: expected a class label or a score vector, got {show(item)}"
    )


def _one(row: list[Any], side: str, where: str) -> Hashable:
    """The class of a row of one value: the value, when it names a class."""
    value = row[0]
    if type(value) is not float or value.is_integer():
        return _class(value, side, where)
    at = f" {where}" if where else ""
    raise Incomparable(
        f"{side} prediction{at}: one score is not a class (kind: numeric compares it), "
        f"got {show(row)}"
    )


def _argmax(scores: list[Any]) -> int:
    return scores.index(max(scores))


def _show(item: Any, key: Hashable) -> str:
    if isinstance(item, list) and len(item) == 1:
        return show(item[0])
    if isinstance(item, list):
        return f"class {key}"
    return show(key if isinstance(item, dict) else item)
