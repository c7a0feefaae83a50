"""Captured answer bytes -> a JSON value, or the reason they cannot be compared.

Bodies come from model servers on a bad day as often as on a good one: HTML error
pages, empty bodies, captures cut at the cap, streams that stop half way. Each becomes
a short reason (``shadow body is not JSON (looks like HTML)``) instead of an exception.

``NaN`` / ``Infinity`` / ``-Infinity`` literals, which some servers emit (Python's
``json.dumps`` does by default) though JSON has no such values, are parsed: a model
that starts answering NaN is exactly what shadow testing should report as a difference,
not hide as incomparable. orjson rejects them, so such bodies take a slower stdlib path;
only bodies orjson refused and that contain one of those words pay for it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from shadowproxy.compare import sse
from shadowproxy.compare.spec import MAX_BODY_BYTES
from shadowproxy.compare.verdict import Incomparable

_NON_FINITE = (b"NaN", b"Infinity")
_INT64 = (-(2**63), 2**64)


def decode(side: str, body: bytes, content_type: str | None, truncated: bool) -> Any:
    """The answer as JSON (a stream reassembled), or ``Incomparable`` naming ``side``."""
    if truncated:
        raise Incomparable(f"{side} body truncated")
    if len(body) > MAX_BODY_BYTES:
        raise Incomparable(
            f"{side} body is too large to compare ({len(body)} bytes, limit {MAX_BODY_BYTES})"
        )
    if not body or body.isspace():
        raise Incomparable(f"{side} body is empty")
    if sse.is_event_stream(body, content_type):
        return sse.reassemble(side, body)
    return parse_json(side, body)


def parse_json(side: str, body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise Incomparable(f"{side} body is nested too deep") from None
        if any(word in body for word in _NON_FINITE):
            return _parse_lenient(side, body)
        raise Incomparable(f"{side} body is not JSON{_hint(body)}") from None


def _parse_lenient(side: str, body: bytes) -> Any:
    """JSON plus NaN/Infinity; integers beyond 64 bits become floats, as orjson reads them."""
    try:
        return json.loads(body.decode("utf-8"), parse_int=_int)
    except RecursionError:
        raise Incomparable(f"{side} body is nested too deep") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Incomparable(f"{side} body is not JSON{_hint(body)}") from None


def _int(text: str) -> int | float:
    if len(text) > 20:
        return float(text)
    value = int(text)
    return value if _INT64[0] <= value < _INT64[1] else float(text)


_COMPRESSED = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


def _hint(body: bytes) -> str:
    for magic, coding in _COMPRESSED.items():
        if body.startswith(magic):
            return f" (looks like {coding}-compressed data)"
    head = body.lstrip()[:64].lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return " (looks like HTML)"
    if head.startswith(b"<"):
        return " (looks like XML or HTML)"
    return ""
