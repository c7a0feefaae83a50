"""Chaos: a shadow's answer corrupted so that every comparator sees another prediction.

A copy marked ``corrupt_prediction`` by a chaos rule (``shadowproxy.experiments.chaos``) has its
body passed through ``corrupt_answer`` by the recorder, before redaction and
comparison, so the recorded body, the extracted prediction and the verdict all show
the corruption. Only the prediction the route's ``compare:`` reads is changed: the
rest of the answer (an open-inference output's ``name`` and ``shape``, say) must stay,
or the pair would merely become incomparable. Within the prediction every value
changes, each in the way its comparators notice:

* a string: every word gets ``~chaos`` appended (text similarity drops to 0; a label or
  an id becomes one the other side does not have);
* a number moves away from zero by at least 1 and by at least its own size
  (``x + sign(x) * max(1, |x|)``, 0 becomes 1), which keeps the order of numbers;
* a list of two or more numbers, or an object whose two or more values are all numbers
  (a score vector, a distribution), also has the entry after its top one (the next
  position; the next key by name) raised above the top, so its argmax names another
  class;
* a boolean flips; null becomes ``"~chaos"``; an empty list or object gets one
  ``"~chaos"`` entry;
* an embedding (``openai-embeddings``: numbers or base64 float32, which stays base64)
  has every number moved as above and then negated, so it points the other way: its
  cosine with the original is negative, under any ``min_cosine`` of 0 or more.

A streamed answer (``text/event-stream``) has the text of every event changed
(``choices[*].delta.content``, ``choices[*].text``: what the reassembled answer is made
of). A body that is not JSON gets ``~chaos`` appended: it was incomparable and stays so.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import orjson

from shadowproxy.compare import jsonpath, sse
from shadowproxy.compare.decode import parse_json
from shadowproxy.compare.embedding import decode_vector, encode_vector, is_vector
from shadowproxy.compare.spec import OPEN_INFERENCE, OPENAI_EMBEDDINGS, CompareConfig
from shadowproxy.compare.verdict import Incomparable

SUFFIX = "~chaos"
_WORD = re.compile(r"\S+")
_NUMBERS = (int, float)


def corrupt_answer(body: bytes, content_type: str | None, compare: CompareConfig) -> bytes:
    """The answer with its prediction (as ``compare`` reads it) changed throughout."""
    if sse.is_event_stream(body, content_type):
        return b"\n".join(_event_line(line) for line in body.split(b"\n"))
    try:
        doc = parse_json("shadow", body)
        if compare.prediction == OPEN_INFERENCE:
            corrupted = _open_inference(doc)
        else:
            path = _path(compare.path)
            change = corrupt_embedding if compare.prediction == OPENAI_EMBEDDINGS else corrupt_value
            corrupted = path.map(doc, change) if path.find(doc) else change(doc)
        return orjson.dumps(corrupted)
    except (Incomparable, orjson.JSONEncodeError, RecursionError):
        return body + SUFFIX.encode()


@functools.lru_cache(maxsize=64)
def _path(text: str) -> jsonpath.JsonPath:
    return jsonpath.parse(text)


def corrupt_value(value: Any) -> Any:
    """A JSON value with every part changed (see the module docstring)."""
    kind = type(value)
    if kind is str:
        return corrupt_text(value)
    if kind is bool:
        return not value
    if kind is int or kind is float:
        return _number(value)
    if kind is list:
        items = [corrupt_value(item) for item in value] or [SUFFIX]
        if _scores(value):
            _raise_next(value, items, list(range(len(items))))
        return items
    if kind is dict:
        fields = {key: corrupt_value(item) for key, item in value.items()} or {SUFFIX: SUFFIX}
        if _scores(list(value.values())):
            _raise_next(value, fields, sorted(fields))
        return fields
    return SUFFIX if value is None else value


def corrupt_embedding(value: Any) -> Any:
    """An embedding pointing the other way, in the form it came (see the docstring)."""
    if type(value) is str:
        try:
            vector = decode_vector(value, "shadow")
        except Incomparable:
            return corrupt_text(value)
        return encode_vector([-_number(number) for number in vector])
    if is_vector(value):
        return [-_number(number) for number in value]
    return corrupt_value(value)


def corrupt_text(text: str) -> str:
    changed, words = _WORD.subn(lambda word: word.group() + SUFFIX, text)
    return changed if words else text + SUFFIX


def _number(value: float) -> float:
    if not math.isfinite(value):
        return 0.0
    step = max(1, abs(value))
    return value + step if value >= 0 else value - step


def _scores(values: list[Any]) -> bool:
    return len(values) >= 2 and all(type(v) is int or type(v) is float for v in values)


def _raise_next(before: Any, scores: Any, keys: list[Any]) -> None:
    """Make the entry after the (first) top one of ``before`` the only top of ``scores``:
    the argmax moves on. The top is found in ``before``, since moving every number can
    round two of them to the same value (``1e-51`` and ``0`` both become ``1.0``)."""
    top = max(keys, key=before.__getitem__)
    following = keys[(keys.index(top) + 1) % len(keys)]
    best = max(scores[key] for key in keys)
    scores[following] = best + max(1, abs(best))


def _open_inference(doc: Any) -> Any:
    """Every output tensor's ``data``, row by row when its ``shape`` has rows."""
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list):
        return corrupt_value(doc)
    return {**doc, "outputs": [_tensor(tensor) for tensor in outputs]}


def _tensor(tensor: Any) -> Any:
    if not isinstance(tensor, dict) or "data" not in tensor:
        return tensor
    data = tensor["data"]
    width = _row_width(tensor.get("shape"), data)
    if width:
        rows = [corrupt_value(data[i : i + width]) for i in range(0, len(data), width)]
        return {**tensor, "data": [value for row in rows for value in row]}
    return {**tensor, "data": corrupt_value(data)}


def _row_width(shape: Any, data: Any) -> int:
    """Values per row of a flat ``data`` whose shape has rows (as ``extract`` reshapes
    it); 0 when it is not cut into rows."""
    if not (isinstance(shape, list) and len(shape) >= 2 and isinstance(data, list)):
        return 0
    if not all(type(dim) is int and dim > 0 for dim in shape):
        return 0
    width = math.prod(shape[1:])
    return width if len(data) == shape[0] * width else 0


def _event_line(line: bytes) -> bytes:
    """One line of an event stream, its JSON event's text changed."""
    if not line.startswith(b"data:"):
        return line
    end = b"\r" if line.endswith(b"\r") else b""
    try:
        chunk = orjson.loads(line[5 : len(line) - len(end)])
    except orjson.JSONDecodeError:
        return line  # [DONE], or one line of a multi-line event
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return line
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            delta["content"] = corrupt_text(delta["content"])
        if isinstance(choice.get("text"), str):
            choice["text"] = corrupt_text(choice["text"])
    return b"data: " + orjson.dumps(chunk) + end
