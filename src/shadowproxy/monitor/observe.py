"""Reading the watched values out of parsed bodies: features from the request, the
prediction's rows as numbers or labels, and production's model version.

The prediction is what ``compare`` extracted (so a route's ``compare.prediction`` preset
decides where it lives). Rows: a list of lists or objects is a batch of rows; a flat
list of scalars is a batch of scalar rows, unless it is one probability distribution
(2+ values in [0, 1] summing to 1), which is one row. A row becomes a label when it is
a class id, a short string, a row of one value or a distribution (its argmax, or the
key of the largest value of an object); it becomes numbers when it holds floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from shadowproxy.compare import auto, jsonpath
from shadowproxy.monitor.spec import FeatureSpec

PredictionKind = Literal["numeric", "label"]


def is_number(value: Any) -> bool:
    """A JSON number (``true`` is not one, nor are NaN and the infinities)."""
    return type(value) in (int, float) and math.isfinite(value)


def label_text(value: Any) -> str | None:
    """A scalar as the label the metrics and the report show (JSON spelling)."""
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) in (int, str):
        return str(value)
    if type(value) is float and value.is_integer():
        return str(int(value))
    return None


@dataclass(frozen=True, slots=True)
class Feature:
    """A compiled ``monitor.features`` entry."""

    spec: FeatureSpec
    path: jsonpath.JsonPath

    @classmethod
    def build(cls, spec: FeatureSpec) -> Feature:
        return cls(spec, jsonpath.parse(spec.path))

    def numbers(self, request: Any) -> list[float]:
        """Every number the path matches (other values are not this feature's)."""
        return [float(v) for v in self.path.find(request) if is_number(v)]

    def categories(self, request: Any) -> list[str]:
        """Every match as a category (numbers and booleans in their JSON spelling)."""
        found = (label_text(v) for v in self.path.find(request))
        return [text for text in found if text is not None]


def rows(prediction: Any) -> list[Any]:
    """The prediction's rows (see the module docstring)."""
    if isinstance(prediction, list):
        if prediction and _is_distribution(prediction):
            return [prediction]
        return prediction
    return [prediction]


def resolve_kind(configured: str, prediction: Any) -> PredictionKind | None:
    """``numeric`` or ``label`` for this prediction; None when ``auto`` sees neither."""
    if configured in ("numeric", "label"):
        return configured  # type: ignore[return-value]
    picked = auto.pick(prediction)
    if picked == "numeric":
        return "numeric"
    if picked in ("label", "probabilities"):
        return "label"
    return None


def numbers(prediction: Any) -> list[float]:
    """Every number of every row, flattened (a row ``[2.5]`` is 2.5)."""
    out: list[float] = []
    for row in rows(prediction):
        out.extend(_flat_numbers(row))
    return out


def labels(prediction: Any) -> list[str]:
    """One label per row; rows that are no label are left out."""
    found = (_row_label(row) for row in rows(prediction))
    return [text for text in found if text is not None]


def model_version(answer: Any, path: jsonpath.JsonPath) -> str | None:
    found = path.find(answer)
    return label_text(found[0]) if found else None


def _row_label(row: Any) -> str | None:
    if isinstance(row, list):
        if len(row) == 1:
            return label_text(row[0])
        if _is_distribution(row):
            return str(max(range(len(row)), key=row.__getitem__))
        return None
    if isinstance(row, dict):
        values = list(row.values())
        if _is_distribution(values):
            return str(max(row, key=row.__getitem__))
        return None
    return label_text(row)


def _flat_numbers(value: Any) -> list[float]:
    if is_number(value):
        return [float(value)]
    if isinstance(value, list):
        return [n for item in value for n in _flat_numbers(item)]
    return []


def _is_distribution(values: list[Any]) -> bool:
    if len(values) < 2 or not all(is_number(v) for v in values):
        return False
    if not 0 <= min(values) <= max(values) <= 1:
        return False
    return abs(math.fsum(values) - 1) <= auto.DISTRIBUTION_SUM_TOLERANCE
