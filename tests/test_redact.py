"""Redaction rules (pure) and their validation at config load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shadowproxy.config import RecordConfig, load_config
from shadowproxy.errors import ConfigError
from shadowproxy.recording.redact import REDACTED, Redactor
from shadowproxy.recording.schema import Withheld
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult

SSN = "123-45-6789"
PATHS = ("$.customer.ssn", "$.instances[*].email")


def redacted(raw: bytes, paths: tuple[str, ...] = PATHS) -> Any:
    body = Redactor(paths).body(raw)
    assert body is not None
    return orjson.loads(body)


def test_paths_are_replaced() -> None:
    doc = {
        "customer": {"ssn": SSN, "name": "Ann"},
        "instances": [{"email": "a@x.io", "f": 1}, {"email": "b@x.io"}, {"f": 2}],
    }
    assert redacted(orjson.dumps(doc)) == {
        "customer": {"ssn": REDACTED, "name": "Ann"},
        "instances": [{"email": REDACTED, "f": 1}, {"email": REDACTED}, {"f": 2}],
    }


def test_a_whole_subtree_is_replaced() -> None:
    assert redacted(b'{"customer": {"ssn": {"a": 1}}}') == {"customer": {"ssn": REDACTED}}


def test_paths_that_do_not_fit_change_nothing() -> None:
    assert redacted(b'[1, 2, {"customer": 3}]') == [1, 2, {"customer": 3}]


def test_a_duplicate_key_cannot_smuggle_the_first_value_through() -> None:
    raw = b'{"customer": {"ssn": "' + SSN.encode() + b'", "ssn": "x"}}'
    body = Redactor(PATHS).body(raw)
    assert body is not None and SSN.encode() not in body


@pytest.mark.parametrize(
    "raw",
    [
        b"ssn=123-45-6789",
        b'{"customer": {"ssn": "123-45-6789"',  # cut short by a capture cap
        b"\xef\xbb\xbf{}",
        b"NaN",
        b"\x1f\x8b\x08\x00compressed",
    ],
)
def test_a_body_that_is_not_json_is_withheld(raw: bytes) -> None:
    assert Redactor(PATHS).body(raw) is None


def test_empty_bodies_pass() -> None:
    assert Redactor(PATHS).body(b"") == b""


def test_without_paths_bodies_pass_unchanged() -> None:
    raw = b"not json at all"
    redactor = Redactor()
    assert not redactor.active
    assert redactor.body(raw) is raw


def test_withhold_all() -> None:
    redactor = Redactor(withhold_all=True)
    assert redactor.body(b'{"a": 1}') is None
    assert redactor.body(b"") == b""


def test_invalid_path_raises() -> None:
    with pytest.raises(ValueError, match="JSON path"):
        Redactor(["customer.ssn"])


def _pair(body: bytes, prod: bytes, shadow: bytes) -> tuple[RequestInfo, ProductionResult, Pair]:
    request = RequestInfo(
        request_id="r",
        ts=0.0,
        route="price",
        method="POST",
        path="/",
        query="",
        headers=[],
        body=body,
        body_complete=True,
    )
    production = ProductionResult(
        status=200, latency_ms=1.0, error=None, body=prod, body_truncated=False, content_type=None
    )
    result = ShadowResult(
        outcome="ok",
        status=200,
        latency_ms=1.0,
        error=None,
        body=shadow,
        body_truncated=False,
        content_type=None,
    )
    return (
        request,
        production,
        Pair(request=request, shadow="s", role="candidate", production=production, result=result),
    )


def test_pair_redacts_all_three_bodies_and_reports_withheld() -> None:
    secret = b'{"customer": {"ssn": "123-45-6789"}}'
    _, _, pair = _pair(secret, b"plain text " + SSN.encode(), secret)
    out, withheld = Redactor(PATHS).pair(pair)
    assert withheld == Withheld(request=False, production=True, shadow=False)
    assert out.production.body == b""  # the comparator never sees a withheld body
    for body in (out.request.body, out.result.body):
        assert SSN.encode() not in body
    assert SSN.encode() in pair.request.body  # the original pair is untouched


def test_pair_without_rules_is_returned_as_is() -> None:
    _, _, pair = _pair(b"x", b"y", b"z")
    out, withheld = Redactor().pair(pair)
    assert out is pair and withheld == Withheld()


def test_memo_redacts_a_shared_request_once() -> None:
    request, production, pair = _pair(b'{"customer": {"ssn": "1"}}', b"{}", b"{}")
    other = Pair(
        request=request, shadow="t", role="candidate", production=production, result=pair.result
    )
    memo: dict[int, tuple[object, bytes | None]] = {}
    first, _ = Redactor(PATHS).pair(pair, memo)
    second, _ = Redactor(PATHS).pair(other, memo)
    assert first.request.body is second.request.body
    assert len(memo) == 2  # request and production, not the shadow body


_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text("abc xyz", max_size=8)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abcd", max_size=4), inner),
    max_leaves=10,
)


@settings(max_examples=60)
@given(
    extra=st.dictionaries(st.text("abcd", max_size=4), _json, max_size=4),
    instances=st.lists(st.dictionaries(st.text("abcd", max_size=4), _json), max_size=4),
)
def test_secrets_at_the_paths_never_survive(extra: dict[str, Any], instances: list[Any]) -> None:
    secret = "SECRET-7f3a"  # no generated string can contain it: different alphabet
    doc = {
        **extra,
        "customer": {"ssn": secret},
        "instances": [{**item, "email": secret} for item in instances],
    }
    body = Redactor(PATHS).body(orjson.dumps(doc))
    assert body is not None
    assert secret.encode() not in body
    assert orjson.loads(body)["customer"] == {"ssn": REDACTED}


# --- validated at config load ------------------------------------------------------


def test_record_config_accepts_valid_paths() -> None:
    assert RecordConfig(redact=PATHS).redact == PATHS


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("customer.ssn", "must start with '\\$'"),
        ("$.customer[", "unexpected '\\['"),
        ("$..ssn", "expected a key after '.'"),
    ],
)
def test_record_config_rejects_invalid_paths(path: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RecordConfig(redact=("$.ok", path))


def test_load_config_names_the_file_and_field(tmp_path: Path) -> None:
    main = tmp_path / "shadowproxy.yaml"
    main.write_text(
        "routes:\n"
        "  - name: price\n"
        "    match: {path_prefix: /price}\n"
        "    production: {url: 'http://127.0.0.1:1'}\n"
        "    record: {redact: ['$.customer..ssn']}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert caught.value.field == "routes[0].record.redact"
    assert "expected a key after '.'" in caught.value.message


def test_redact_imports_without_aiohttp() -> None:
    code = "import sys, shadowproxy.recording.redact; assert 'aiohttp' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
