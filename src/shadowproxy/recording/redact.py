"""Redaction: remove configured JSON values from bodies before anything is recorded.

A route's ``record.redact`` paths (``$.customer.ssn``, ``$.instances[*].email``) are
replaced by ``"[redacted]"`` in the request body and in both responses. The recorder
redacts first and hands the comparator the redacted pair, so extracted predictions
can never hold a redacted value either.

Rules, chosen so that a privacy mistake needs two bugs, not one:

* a body that is not JSON (or cut short by a capture cap, so it no longer parses)
  is *withheld* when redaction is configured: it is never written, and its row says
  ``<body>_withheld = true``;
* a redacted body is re-serialised from the parsed document even where no path
  matched, so text the parser dropped (a duplicate key's first value) cannot survive;
* JSON nested inside a string value is not inspected: configure the producer to send
  real objects, or redact the whole string.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import orjson

from shadowproxy.compare import jsonpath
from shadowproxy.recording.schema import Withheld
from shadowproxy.records import Pair

REDACTED = "[redacted]"

Memo = dict[int, tuple[object, bytes | None]]
"""Redacted bodies by ``id()`` of the object holding them, kept with that object.

The pairs of one request share its ``RequestInfo`` and ``ProductionResult``; the memo
redacts each of them once instead of once per shadow.
"""


class Redactor:
    """One route's redaction rules, compiled once.

    ``withhold_all`` withholds every non-empty body: the policy for a route the
    recorder has no configuration for, where it cannot know what must be hidden.
    """

    __slots__ = ("paths", "withhold_all")

    def __init__(self, paths: Iterable[str] = (), *, withhold_all: bool = False) -> None:
        self.paths = tuple(jsonpath.parse(path) for path in paths)
        self.withhold_all = withhold_all

    @property
    def active(self) -> bool:
        """False when bodies pass through unchanged."""
        return bool(self.paths) or self.withhold_all

    def body(self, raw: bytes) -> bytes | None:
        """The body with every path replaced, or None when it must be withheld."""
        if not self.active or not raw:
            return raw
        if self.withhold_all:
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return self._serialise(doc)

    def _serialise(self, doc: Any) -> bytes | None:
        for path in self.paths:
            doc = path.replace(doc, REDACTED)
        try:
            return orjson.dumps(doc)
        except orjson.JSONEncodeError:
            return None

    def pair(self, pair: Pair, memo: Memo | None = None) -> tuple[Pair, Withheld]:
        """The pair with redacted bodies (withheld ones emptied) and what was withheld."""
        if not self.active:
            return pair, Withheld()
        memo = {} if memo is None else memo
        request_body = self._memo_body(pair.request, pair.request.body, memo)
        prod_body = self._memo_body(pair.production, pair.production.body, memo)
        shadow_body = self.body(pair.result.body)
        redacted = replace(
            pair,
            request=replace(pair.request, body=request_body or b""),
            production=replace(pair.production, body=prod_body or b""),
            result=replace(pair.result, body=shadow_body or b""),
        )
        withheld = Withheld(
            request=request_body is None,
            production=prod_body is None,
            shadow=shadow_body is None,
        )
        return redacted, withheld

    def _memo_body(self, owner: object, raw: bytes, memo: Memo) -> bytes | None:
        key = id(owner)
        hit = memo.get(key)
        if hit is not None and hit[0] is owner:
            return hit[1]
        body = self.body(raw)
        memo[key] = (owner, body)
        return body
