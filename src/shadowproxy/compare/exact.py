"""JSON equality that can say where two values first differ.

Equal means equal as JSON, which is not quite Python's ``==``: object keys in any order,
numbers by value (``1`` equals ``1.0``), but ``true`` is not ``1`` and ``false`` is not
``0``; and ``NaN`` equals ``NaN`` (a model answering NaN twice answered the same).
Lists of scalars are checked with C-level comparisons first, so an equal batch of
numbers costs a few microseconds per thousand values.
"""

from __future__ import annotations

import re
from typing import Any

from shadowproxy.compare.verdict import index_path, show

Difference = tuple[str, str]
"""(path inside the value, what differs), e.g. ``("[3].label", '"cat" vs "dog"')``."""

_CONTAINERS = frozenset({list, dict})
_NUMBERS = frozenset({int, float})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def first_difference(a: Any, b: Any) -> Difference | None:
    """Where ``a`` and ``b`` first differ as JSON, or None when they are equal."""
    if a is b:
        return None
    kind_a, kind_b = type(a), type(b)
    if kind_a is list and kind_b is list:
        return _list_difference(a, b)
    if kind_a is dict and kind_b is dict:
        return _dict_difference(a, b)
    if kind_a in _NUMBERS and kind_b in _NUMBERS:
        equal = a == b or (a != a and b != b)  # NaN equals NaN here
        return None if equal else ("", f"{show(a)} vs {show(b)}")
    if kind_a is kind_b and a == b:
        return None
    return ("", f"{show(a)} vs {show(b)}")


def _list_difference(a: list[Any], b: list[Any]) -> Difference | None:
    if len(a) != len(b):
        return ("", f"length {len(a)} vs {len(b)}")
    types = list(map(type, a))
    # Same types position by position and Python-equal: equal as JSON, unless nested.
    if a == b and types == list(map(type, b)) and not _CONTAINERS.intersection(types):
        return None
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        found = first_difference(x, y)
        if found is not None:
            return (index_path(index, found[0]), found[1])
    return None


def _dict_difference(a: dict[str, Any], b: dict[str, Any]) -> Difference | None:
    if a.keys() != b.keys():
        missing = next((key for key in a if key not in b), None)
        if missing is not None:
            return (_key_path(missing, ""), "missing in shadow")
        extra = next(key for key in b if key not in a)
        return (_key_path(extra, ""), "only in shadow")
    for key, value in a.items():
        found = first_difference(value, b[key])
        if found is not None:
            return (_key_path(key, found[0]), found[1])
    return None


def _key_path(key: str, rest: str) -> str:
    """``label``, ``outputs[0]``, ``['a b']``: how a key reads in a detail."""
    head = key if _IDENTIFIER.match(key) else f"[{key!r}]"
    if not rest:
        return head
    return f"{head}{rest}" if rest.startswith("[") else f"{head}.{rest}"
