"""What the writer checks of a comparer's answer before it goes on a row."""

from __future__ import annotations

from shadowproxy.records import Comparison

_OPTIONAL_TEXT = ("prod_prediction", "shadow_prediction", "detail")


_INT32 = range(-(2**31), 2**31)


def comparison_problem(comparison: object) -> str | None:
    """Why a comparer's answer cannot be recorded, or None when it can.

    The comparer is someone else's code called per pair: a wrong type must become a
    ``comparator error`` on one row, not a batch Arrow rejects.
    """
    if not isinstance(comparison, Comparison):
        return f"returned {type(comparison).__name__}, not a Comparison"
    c = comparison
    if not isinstance(c.comparator, str):
        return f"comparator is {type(c.comparator).__name__}, not str"
    for name in _OPTIONAL_TEXT:
        value = getattr(c, name)
        if value is not None and not isinstance(value, str):
            return f"{name} is {type(value).__name__}, not str"
    if c.agree is not None and not isinstance(c.agree, bool):
        return f"agree is {type(c.agree).__name__}, not bool"
    score = c.diff_score
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        return f"diff_score is {type(score).__name__}, not float"
    for name in ("batch_size", "batch_agree"):
        value = getattr(c, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value not in _INT32
        ):
            return f"{name} is {value!r}, not a 32-bit int"
    return None
