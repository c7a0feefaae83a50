"""Ground truth arriving later: validation of ``POST /feedback`` bodies.

A body is ``{"request_id": "...", "label": <any JSON>}`` or a list of those. An item
may carry ``"outcome": <number or boolean>`` instead of ``label``: what happened after
an experiment's answer (a click, a purchase, a rating, seconds on site), which the
report's experiment section compares between arms. Both are stored alike, as JSON text
in the ``label`` column; ``outcome`` only adds the type check. Either every item is
valid and all are accepted, or the request is refused whole with the first problem
named, so a client never has to guess which half was stored.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_ITEMS = 10_000
MAX_REQUEST_ID = 128

FeedbackItem = tuple[str, str, float]
"""(request_id, label as JSON text, received at: seconds since the epoch)."""


class FeedbackError(ValueError):
    """The body is refused whole; the message says what and where."""


def parse_feedback(body: bytes, received_at: float) -> list[FeedbackItem]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FeedbackError(f"body is not JSON: {exc}") from None
    items = document if isinstance(document, list) else [document]
    if not items:
        raise FeedbackError("empty list: nothing to record")
    if len(items) > MAX_ITEMS:
        raise FeedbackError(f"{len(items)} items in one request; at most {MAX_ITEMS}")
    many = isinstance(document, list)
    return [_item(item, index if many else None, received_at) for index, item in enumerate(items)]


def _item(item: Any, index: int | None, received_at: float) -> FeedbackItem:
    where = f"item {index}: " if index is not None else ""
    if not isinstance(item, dict):
        raise FeedbackError(f"{where}must be an object with request_id and label or outcome")
    unknown = sorted(set(item) - {"request_id", "label", "outcome"})
    if unknown:
        raise FeedbackError(f"{where}unknown key {', '.join(map(repr, unknown))}")
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise FeedbackError(f"{where}request_id must be a string of 1-{MAX_REQUEST_ID} characters")
    if "label" in item and "outcome" in item:
        raise FeedbackError(f"{where}give label or outcome, not both (request_id {request_id!r})")
    if "outcome" in item:
        return request_id, _outcome(item["outcome"], where, request_id), received_at
    if "label" not in item or item["label"] is None:
        raise FeedbackError(f"{where}label is missing (request_id {request_id!r})")
    return request_id, orjson.dumps(item["label"]).decode(), received_at


def _outcome(value: Any, where: str, request_id: str) -> str:
    # bool is an int in Python; both are fine. NaN cannot arrive: it is not JSON.
    if not isinstance(value, int | float):
        raise FeedbackError(
            f"{where}outcome must be a number or a boolean, got {orjson.dumps(value).decode()} "
            f"(request_id {request_id!r})"
        )
    return orjson.dumps(value).decode()
