"""``auto``: choose a comparator from the JSON types of production's prediction.

The rule is written once, as ``RULE`` (shown on ``/routes``), and ``pick`` follows it
line by line. It looks only at production's prediction, so both sides of a pair are
judged by the same comparator; the choice is reported per pair as ``auto:<kind>``.
``ranking`` is never picked: a list of ids looks like a batch of labels.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

from shadowproxy.compare.spec import Kind

SHORT_LABEL_CHARS = 32
DISTRIBUTION_SUM_TOLERANCE = 0.01

RULE: tuple[str, ...] = (
    (
        "a string: label if it is one short token (no whitespace, "
        f"<= {SHORT_LABEL_CHARS} characters), else text"
    ),
    "true/false or an integer: label",
    "a float: numeric",
    "an array of strings (null allowed): label if every item is one short token, else text",
    "an array of integers and/or booleans: label",
    (
        "an array of numbers with floats: probabilities if it is one distribution "
        f"(2+ values in [0, 1] summing to 1 +- {DISTRIBUTION_SUM_TOLERANCE}), else numeric"
    ),
    (
        "an array of one-value arrays (rows of width 1, e.g. [[3], [0]]): label if the values "
        "are integers, booleans or short tokens (class ids), numeric if they are numbers"
    ),
    "an array of arrays of numbers: probabilities if every row is a distribution, else numeric",
    "an object of numbers that is a distribution, or an array of such objects: probabilities",
    "anything else (objects, mixed arrays, null, an empty array): exact",
)

_NUMBERS = frozenset({int, float})


def pick(value: Any) -> Kind:
    """The comparator ``auto`` uses for a pair whose production prediction is ``value``."""
    kind = type(value)
    if kind is str:
        return "label" if _short_tokens([value]) else "text"
    if kind is bool or kind is int:
        return "label"
    if kind is float:
        return "numeric"
    if kind is dict:
        return "probabilities" if _is_distribution(list(value.values())) else "exact"
    if kind is list and value:
        return _pick_array(value)
    return "exact"


def _pick_array(items: list[Any]) -> Kind:
    types = set(map(type, items))
    if types <= {str, type(None)}:
        return "label" if types == {str} and _short_tokens(items) else "text"
    if types <= {int, bool}:
        return "label"
    if types <= _NUMBERS:
        return "probabilities" if _is_distribution(items) else "numeric"
    if types == {list}:
        return _pick_rows(items)
    if types == {dict} and all(_is_distribution(list(item.values())) for item in items):
        return "probabilities"
    return "exact"


def _pick_rows(rows: list[list[Any]]) -> Kind:
    values = list(chain.from_iterable(rows))
    if len(values) == len(rows) and min(map(len, rows)) == 1:
        return _pick_width_one(values)
    if not values or type(values[0]) not in _NUMBERS:
        return "exact"
    try:  # min/max compare every value with a number: a string, null or array raises
        low, high = min(values), max(values)
    except TypeError:
        return "exact"
    if min(map(len, rows)) < 2 or not 0 <= low <= high <= 1:
        return "numeric"
    near_one = all(abs(total - 1) <= DISTRIBUTION_SUM_TOLERANCE for total in map(math.fsum, rows))
    return "probabilities" if near_one else "numeric"


def _pick_width_one(values: list[Any]) -> Kind:
    """Rows of one value each: class ids (label) unless they are numbers with floats."""
    types = set(map(type, values))
    if types <= {int, bool} or (types == {str} and _short_tokens(values)):
        return "label"
    return "numeric" if types <= _NUMBERS else "exact"


def _is_distribution(values: list[Any]) -> bool:
    if len(values) < 2 or not set(map(type, values)) <= _NUMBERS:
        return False
    if not 0 <= min(values) <= max(values) <= 1:
        return False
    return abs(math.fsum(values) - 1) <= DISTRIBUTION_SUM_TOLERANCE


def _short_tokens(items: list[str]) -> bool:
    """Every string is one token of at most ``SHORT_LABEL_CHARS``: C-level, no loop."""
    if max(map(len, items)) > SHORT_LABEL_CHARS:
        return False
    return len(" ".join(items).split()) == len(items)
