"""The bound on class and category label values.

Model outputs and request fields are unbounded (a free-text field, a bug that puts ids
in a category), and each distinct label value is a new time series in Prometheus and a
new column in a chart. So every class or category passes through a ``CategoryBound``:
the first ``max_categories`` values seen since start, or the fixed ``categories`` list,
keep their name; everything else is ``other``, and how often that happened is counted.
Memory is the kept set, never the traffic.
"""

from __future__ import annotations

from collections.abc import Iterable

OTHER = "other"


class CategoryBound:
    """Maps values to at most ``max_categories`` names plus ``other``."""

    __slots__ = ("_fixed", "_kept", "max_categories", "overflowed")

    def __init__(self, max_categories: int, categories: Iterable[str] | None = None) -> None:
        if max_categories < 1:
            raise ValueError(f"max_categories must be at least 1, got {max_categories}")
        self.max_categories = max_categories
        self._fixed = categories is not None
        self._kept: set[str] = set(categories or ())
        if len(self._kept) > max_categories:
            raise ValueError(f"{len(self._kept)} categories, more than {max_categories}")
        self.overflowed = 0
        """Values mapped to ``other`` because the set was full or fixed."""

    def label(self, value: str) -> str:
        if value in self._kept:
            return value
        if not self._fixed and len(self._kept) < self.max_categories:
            self._kept.add(value)
            return value
        self.overflowed += 1
        return OTHER

    @property
    def kept(self) -> frozenset[str]:
        return frozenset(self._kept)
