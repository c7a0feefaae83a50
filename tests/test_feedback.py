from __future__ import annotations

import orjson
import pytest

from shadowproxy.admin.feedback import MAX_ITEMS, FeedbackError, parse_feedback


def test_one_item_and_a_list() -> None:
    assert parse_feedback(b'{"request_id": "r1", "label": 1}', 5.0) == [("r1", "1", 5.0)]
    items = parse_feedback(
        b'[{"request_id": "a", "label": "cat"}, {"request_id": "b", "label": [0.1, 0.9]}]', 1.0
    )
    assert items == [("a", '"cat"', 1.0), ("b", "[0.1,0.9]", 1.0)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body is not JSON"),
        (b"[]", "empty list"),
        (b"42", "must be an object"),
        (b'{"label": 1}', "request_id must be a string"),
        (b'{"request_id": 7, "label": 1}', "request_id must be a string"),
        (b'{"request_id": "r"}', "label is missing (request_id 'r')"),
        (b'{"request_id": "r", "label": null}', "label is missing"),
        (b'{"request_id": "r", "label": 1, "extra": 2}', "unknown key 'extra'"),
        (b'[{"request_id": "ok", "label": 1}, {"request_id": ""}]', "item 1: request_id"),
    ],
)
def test_refused_whole_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(FeedbackError) as caught:
        parse_feedback(body, 0.0)
    assert message in str(caught.value)


def test_item_bound() -> None:
    body = orjson.dumps([{"request_id": str(n), "label": 0} for n in range(MAX_ITEMS + 1)])
    with pytest.raises(FeedbackError, match="at most"):
        parse_feedback(body, 0.0)


def test_outcomes_are_numbers_or_booleans_stored_as_json() -> None:
    body = b'[{"request_id": "a", "outcome": 1}, {"request_id": "b", "outcome": true},'
    body += b' {"request_id": "c", "outcome": 12.5}]'
    assert parse_feedback(body, 2.0) == [("a", "1", 2.0), ("b", "true", 2.0), ("c", "12.5", 2.0)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"request_id": "r", "outcome": "yes"}',
            'outcome must be a number or a boolean, got "yes"',
        ),
        (
            b'{"request_id": "r", "outcome": null}',
            "outcome must be a number or a boolean, got null",
        ),
        (b'{"request_id": "r", "outcome": [1]}', "outcome must be a number"),
        (b'{"request_id": "r", "outcome": 1, "label": 1}', "label or outcome, not both"),
    ],
)
def test_bad_outcomes_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(FeedbackError) as caught:
        parse_feedback(body, 0.0)
    assert message in str(caught.value)
