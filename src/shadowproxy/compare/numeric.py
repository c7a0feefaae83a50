"""``numeric``: numbers compared element-wise within a tolerance (regression outputs).

Two numbers agree when ``|a - b| <= max(rel_tol * max(|a|, |b|), abs_tol)``, the rule
of ``math.isclose``, except that NaN agrees with NaN (and infinities with the same
infinity). Items may be numbers or (nested) arrays of numbers; arrays must have the
same shape on both sides. ``diff_score`` is the largest absolute difference over every
element of every item (``inf`` when a NaN or infinity meets a different value).
``true``/``false`` count as 1 and 0.

The common layouts, a batch of numbers or a batch of rows of numbers, are compared with
C-level ``map`` over one flat list (no Python code runs per element); anything else
(3-D items, shapes that differ, values that are not numbers) goes item by item in plain
Python, which also writes the precise reason when a value is not a number.
"""

from __future__ import annotations

import math
from itertools import chain, compress, repeat
from operator import and_, gt, mul, not_, sub
from typing import Any

from shadowproxy.compare.spec import MAX_ELEMENTS, CompareConfig
from shadowproxy.compare.verdict import (
    Incomparable,
    Item,
    Verdict,
    combine,
    identical,
    index_path,
    pair_batches,
    show,
)

_NUMBERS = frozenset({int, float, bool})

Layout = tuple[list[Any], list[Any], list[int] | None]
"""Both sides as flat lists, and the row widths (None: every item is one number)."""


def numeric(prod: Any, shadow: Any, config: CompareConfig) -> Verdict:
    pairing = pair_batches(prod, shadow)
    if isinstance(pairing, Verdict):
        return pairing
    p_items, s_items, is_batch = pairing
    try:
        verdict = _vectorised(p_items, s_items, is_batch, config)
        if verdict is not None:
            return verdict
        items = [
            _item(x, y, index if is_batch else None, config)
            for index, (x, y) in enumerate(zip(p_items, s_items, strict=True))
        ]
        return combine(items, is_batch)
    except OverflowError:
        raise Incomparable("prediction has a number too large to compare") from None


def _layout(p_items: list[Any], s_items: list[Any]) -> Layout | None:
    """Flatten a batch of rows; None when the rows do not line up (the general path)."""
    if not p_items or type(p_items[0]) is not list:
        return p_items, s_items, None
    # Rows are lists on both sides: a string has a length too, and "" would pass as a
    # row of width 0 beside [].
    if any(type(item) is not list for item in p_items) or any(
        type(item) is not list for item in s_items
    ):
        return None
    widths = list(map(len, p_items))
    if widths != list(map(len, s_items)):
        return None
    xs = list(chain.from_iterable(p_items))
    if len(xs) > MAX_ELEMENTS:
        raise Incomparable(f"production prediction has {len(xs)} numbers, limit {MAX_ELEMENTS}")
    return xs, list(chain.from_iterable(s_items)), widths


def _vectorised(
    p_items: list[Any], s_items: list[Any], is_batch: bool, config: CompareConfig
) -> Verdict | None:
    """The fast path, or None. Types are left to the arithmetic: a string, null, object
    or nested array in the flat lists makes ``sum``/``sub`` raise ``TypeError``."""
    layout = _layout(p_items, s_items)
    if layout is None:
        return None
    xs, ys, widths = layout
    batch = len(p_items) if is_batch else None
    try:
        if xs == ys:
            sum(xs)  # numbers only
            return identical(batch)
        gaps = list(map(abs, map(sub, xs, ys)))
    except TypeError:
        return None
    finite = math.isfinite(sum(gaps))
    if not finite:
        gaps = list(map(_gap, xs, ys))
    worst = float(max(gaps, default=0.0))
    if worst <= config.abs_tol:
        return Verdict(True, worst, None, batch, batch)
    out = (
        _out_of_tolerance(xs, ys, gaps, config) if finite else _out_one_by_one(xs, ys, gaps, config)
    )
    if True not in out:
        return Verdict(True, worst, None, batch, batch)
    return _disagreement(xs, ys, widths, out, worst, batch)


def _disagreement(
    xs: list[Any],
    ys: list[Any],
    widths: list[int] | None,
    out: list[bool],
    worst: float,
    batch: int | None,
) -> Verdict:
    """Count the items with an element out of tolerance and name the first such element."""
    first = out.index(True)
    if widths is None:
        item, where, bad_items = first, "", out.count(True)
    elif widths.count(widths[0]) == len(widths):
        width = widths[0]
        item, where = first // width, f"[{first % width}]"
        bad_items = sum(map(any, zip(*[iter(out)] * width, strict=True)))  # rows of ``width``
    else:
        owners = list(chain.from_iterable(map(repeat, range(len(widths)), widths)))
        item = owners[first]
        where = f"[{first - owners.index(item)}]"
        bad_items = len(set(compress(owners, out)))
    if batch is None:
        return Verdict(False, worst, _vs(xs, ys, first), None, None)
    detail = f"{index_path(item)}{where}: {_vs(xs, ys, first)}"
    return Verdict(False, worst, detail, batch, batch - bad_items)


def _vs(xs: list[Any], ys: list[Any], index: int) -> str:
    return f"{show(xs[index])} vs {show(ys[index])}"


def _gap(x: float, y: float) -> float:
    """|x - y| where NaN meets NaN (or an infinity itself) at distance 0, else at inf."""
    if x == y or (x != x and y != y):
        return 0.0
    if math.isfinite(x) and math.isfinite(y):
        return abs(x - y)
    return math.inf


def _out_one_by_one(
    xs: list[Any], ys: list[Any], gaps: list[float], config: CompareConfig
) -> list[bool]:
    """Per element, out of tolerance? In Python: for NaN and infinities."""
    rel, absolute = config.rel_tol, config.abs_tol
    return [
        gap == math.inf or gap > max(rel * max(abs(x), abs(y)), absolute)
        for x, y, gap in zip(xs, ys, gaps, strict=True)
    ]


def _out_of_tolerance(
    xs: list[Any], ys: list[Any], gaps: list[float], config: CompareConfig
) -> list[bool]:
    """Per element, out of tolerance? For finite values, without Python code per element.

    A gap over the loosest tolerance any element can have, ``max(abs_tol, rel_tol *
    max|v|)``, is out whatever the element's own size: one comparison settles most
    elements of a model that really differs. The rest get the exact test: in Python
    when they are few, else as maps over every element (``gap > abs_tol and
    gap > rel_tol * |x| and gap > rel_tol * |y|``).
    """
    rel, absolute = config.rel_tol, config.abs_tol
    # max|y| <= max|x| + max gap: a bound on the loosest tolerance that skips two passes.
    loosest = max(absolute, rel * (max(max(xs), -min(xs)) + max(gaps)))
    out = list(map(gt, gaps, repeat(loosest)))
    if rel == 0 or False not in out:
        return out
    unsure = list(compress(range(len(out)), map(not_, out)))
    if len(unsure) * 4 <= len(out):
        for i in unsure:
            out[i] = gaps[i] > max(absolute, rel * max(abs(xs[i]), abs(ys[i])))
        return out
    over_x = map(gt, gaps, map(mul, map(abs, xs), repeat(rel)))
    over_y = map(gt, gaps, map(mul, map(abs, ys), repeat(rel)))
    return list(map(and_, map(gt, gaps, repeat(absolute)), map(and_, over_x, over_y)))


# --- the general path: one item at a time -----------------------------------------


def _item(x: Any, y: Any, index: int | None, config: CompareConfig) -> Item:
    where = "" if index is None else index_path(index)
    leaves_x = _leaves(x, "production", where)
    leaves_y = _leaves(y, "shadow", where)
    if [path for path, _ in leaves_x] != [path for path, _ in leaves_y]:
        return Item(False, None, f"shape {_shape(x)} vs {_shape(y)}")
    xs = [value for _, value in leaves_x]
    ys = [value for _, value in leaves_y]
    gaps = list(map(_gap, xs, ys))
    worst = float(max(gaps, default=0.0))
    out = _out_one_by_one(xs, ys, gaps, config) if worst > config.abs_tol else []
    if True not in out:
        return Item(True, worst)
    first = out.index(True)
    return Item(False, worst, _vs(xs, ys, first), leaves_x[first][0])


def _leaves(value: Any, side: str, where: str) -> list[tuple[str, Any]]:
    """Every number in ``value`` with its path; ``Incomparable`` at the first non-number."""
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if type(node) in _NUMBERS:
            out.append((path, node))
        elif type(node) is list:
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(node))))
        else:
            at = f" {where}{path}" if where or path else ""
            raise Incomparable(f"{side} prediction{at}: expected a number, got {show(node)}")
        if len(out) > MAX_ELEMENTS:
            raise Incomparable(f"{side} prediction has over {MAX_ELEMENTS} numbers")
    return out


def _shape(value: Any) -> str:
    """``number``, ``[3]``, ``[2][4]`` (following first elements): enough for a detail."""
    dims: list[int] = []
    node = value
    while type(node) is list:
        dims.append(len(node))
        if not node:
            break
        node = node[0]
    return "number" if not dims else "".join(f"[{dim}]" for dim in dims)
