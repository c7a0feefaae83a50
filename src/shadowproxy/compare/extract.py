"""From a decoded answer to the prediction a comparator judges.

Two steps, both compiled once per route: the ``ignore`` paths are deleted from the whole
answer (they are written against the body, like ``prediction``), then ``prediction``
selects the value. A path without ``[*]`` yields the value it finds; a path with ``[*]``
yields the list of every match (so ``$.choices[*].message.content`` is a batch of one
text per choice). A path that finds nothing makes the pair incomparable.

``open-inference`` (KServe v2, Triton, MLServer) answers carry ``outputs``: a list of
``{name, shape, datatype, data}`` tensors with ``data`` flattened in row-major order.
The preset picks the output named by ``compare.output`` (default: the first) and, when
its ``shape`` has two or more dimensions, cuts ``data`` into ``shape[0]`` rows (each row
the remaining dimensions, flattened), so a batch compares row by row as in KServe v1.
A row of one value of a class datatype (an integer, ``BOOL`` or ``BYTES``) is that value:
MLServer answers a scikit-learn classifier's ``predict`` as ``shape [N, 1]`` ``INT64``,
and those are N class labels, not N one-score vectors (whose argmax is always 0). A
floating-point output of width 1 keeps its rows: a regression score stays numeric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shadowproxy.compare import jsonpath
from shadowproxy.compare.spec import MAX_ELEMENTS, OPEN_INFERENCE, CompareConfig
from shadowproxy.compare.verdict import Incomparable

CLASS_DATATYPES = frozenset(
    {"BOOL", "BYTES", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
"""Open Inference datatypes whose values are classes themselves, never scores."""


@dataclass(frozen=True, slots=True)
class Extractor:
    """Compiled ``prediction`` + ``ignore`` + ``output`` of one route."""

    ignore: tuple[jsonpath.JsonPath, ...]
    path: jsonpath.JsonPath
    open_inference: bool
    output: str | None

    @classmethod
    def build(cls, config: CompareConfig) -> Extractor:
        return cls(
            ignore=tuple(jsonpath.parse(text) for text in config.ignore),
            path=jsonpath.parse(config.path),
            open_inference=config.prediction == OPEN_INFERENCE,
            output=config.output,
        )

    def __call__(self, side: str, answer: Any) -> Any:
        """The prediction in ``answer``, or ``Incomparable`` naming ``side``."""
        for path in self.ignore:
            answer = path.delete(answer)
        if self.open_inference:
            return _open_inference(side, answer, self.output)
        found = self.path.find(answer)
        if jsonpath.ANY in self.path.steps:
            if found:
                return found
        elif found:
            return found[0]
        raise Incomparable(f"no {self.path} in {side} body")


def _open_inference(side: str, answer: Any, name: str | None) -> Any:
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise Incomparable(f"no outputs in {side} body")
    tensor = _pick_output(side, outputs, name)
    label = f"output {tensor.get('name', 0)!r}"
    if "data" not in tensor:
        raise Incomparable(f"no data in {side} {label}")
    rows = _reshape(side, label, tensor["data"], tensor.get("shape"))
    if tensor.get("datatype") in CLASS_DATATYPES:
        return _labels(rows)
    return rows


def _pick_output(side: str, outputs: list[Any], name: str | None) -> dict[str, Any]:
    tensors = [tensor for tensor in outputs if isinstance(tensor, dict)]
    if not tensors:
        raise Incomparable(f"no outputs in {side} body")
    if name is None:
        return tensors[0]
    for tensor in tensors:
        if tensor.get("name") == name:
            return tensor
    names = ", ".join(str(tensor.get("name")) for tensor in tensors)
    # Names are the server's strings: a lone surrogate (a legal JSON escape) would make
    # the detail, and so the whole recorded row, impossible to write as UTF-8.
    names = names.encode("utf-8", "backslashreplace").decode()
    raise Incomparable(f"no output {name!r} in {side} body (outputs: {names})")


def _reshape(side: str, label: str, data: Any, shape: Any) -> Any:
    """Rows for a flat ``data`` whose shape has 2+ dimensions; anything else as it is."""
    if not _is_shape(shape) or len(shape) < 2 or not isinstance(data, list):
        return data
    if any(isinstance(value, list) for value in data[:1]):
        return data  # already nested (some servers send nested arrays)
    if math.prod(shape) != len(data):
        raise Incomparable(
            f"{side} {label} has {len(data)} values but shape {list(shape)} "
            f"needs {math.prod(shape)}"
        )
    rows, width = shape[0], math.prod(shape[1:])
    if rows > MAX_ELEMENTS:
        raise Incomparable(f"{side} {label} has {rows} rows, over the limit of {MAX_ELEMENTS}")
    return [data[row * width : (row + 1) * width] for row in range(rows)]


def _labels(rows: Any) -> Any:
    """Rows of one value as those values (``[[2], [0]]`` -> ``[2, 0]``); else ``rows``."""
    if not isinstance(rows, list) or not rows:
        return rows
    if set(map(type, rows)) == {list} and set(map(len, rows)) == {1}:
        return [row[0] for row in rows]
    return rows


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, list) and all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    )
