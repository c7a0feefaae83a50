from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.compare.jsonpath import parse

DOC = {
    "predictions": [0.1, 0.9],
    "outputs": [{"name": "probs", "data": [1, 2]}, {"name": "label", "data": ["a"]}],
    "choices": [{"message": {"content": "hi"}}, {"message": {"content": "yo"}}],
    "weird key": {"x": 1},
}


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("$", [DOC]),
        ("$.predictions", [[0.1, 0.9]]),
        ("$.predictions[1]", [0.9]),
        ("$.predictions[-1]", [0.9]),
        ("$.predictions[5]", []),
        ("$.outputs[0].data", [[1, 2]]),
        ("$.outputs[*].name", ["probs", "label"]),
        ("$.choices[*].message.content", ["hi", "yo"]),
        ("$['weird key'].x", [1]),
        ('$["weird key"]["x"]', [1]),
        ("$.missing.deeper", []),
        ("$.predictions.key", []),
        ("$.*", list(DOC.values())),
    ],
)
def test_find(path: str, found: list[object]) -> None:
    assert parse(path).find(DOC) == found


def test_replace_and_delete_copy_on_write() -> None:
    doc = {"instances": [{"email": "a@b", "x": 1}, {"x": 2}], "customer": {"ssn": "123"}}
    redacted = parse("$.instances[*].email").replace(doc, "[redacted]")
    assert redacted["instances"][0] == {"email": "[redacted]", "x": 1}
    assert redacted["instances"][1] == {"x": 2}
    assert doc["instances"][0]["email"] == "a@b"
    assert parse("$.customer.ssn").delete(doc) == {**doc, "customer": {}}
    assert parse("$.instances[0]").delete(doc)["instances"] == [{"x": 2}]
    assert parse("$.nothing[*].here").replace(doc, 0) == doc


@pytest.mark.parametrize("bad", ["predictions", "$.", "$[x]", "$.a..b", "$[1", "$.a[*", "$ .a"])
def test_malformed_paths_are_rejected_with_a_position(bad: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        parse(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values, st.sampled_from(["$.a", "$[0]", "$[*].b", "$.*.*", "$.a[-1].c"]))
def test_never_raises_on_any_document(doc: object, path: str) -> None:
    compiled = parse(path)
    compiled.find(doc)
    compiled.replace(doc, "[redacted]")
    compiled.delete(doc)
