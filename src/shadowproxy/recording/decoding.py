"""Compressed bodies decoded before anything reads them: a pair in, its decoded pair out.

The proxy passes bodies on as they travelled, so production's client gets production's
bytes and ``Content-Encoding`` unchanged. This is the writer's first step on a pair,
before chaos corruption, redaction and comparison, so each of those reads plain JSON.

Each body with a ``Content-Encoding`` (the request, production's answer, the shadow's
answer) is decoded within the route's ``max_decoded_bytes`` (``compare.content_coding``)
and replaced by the decoded bytes. One that cannot be decoded stays as sent and its
``decode_error`` says why: the pair is incomparable for that reason, and the row keeps it
in ``<body>_decode_error``. The encoding as sent is recorded either way.

A body cut at the capture cap decodes to its decoded start, still flagged truncated.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from shadowproxy.compare.content_coding import CodingError, CodingFailure, decode
from shadowproxy.records import Observation, Pair, ProductionResult, RequestInfo, ShadowResult

BODIES = ("request", "production", "shadow")
"""The ``body`` label of ``shadowproxy_body_decode_failures_total``."""

Failure = tuple[str, CodingFailure]
"""(body, failure): a body of this pair that could not be decoded."""

Memo = dict[int, tuple[object, object, CodingFailure | None]]
"""Decoded records by ``id()`` of the record as received, kept with it: the pairs of one
request share its ``RequestInfo`` and ``ProductionResult``, decoded once."""

_Record = TypeVar("_Record", RequestInfo, ProductionResult, ShadowResult)


def decode_pair(pair: Pair, limit: int, memo: Memo | None = None) -> tuple[Pair, list[Failure]]:
    """The pair with its encoded bodies decoded, and the bodies that could not be."""
    memo = {} if memo is None else memo
    failures: list[Failure] = []
    request, failure = _decoded(pair.request, not pair.request.body_complete, limit, memo)
    if failure is not None:
        failures.append(("request", failure))
    production, failure = _decoded(pair.production, pair.production.body_truncated, limit, memo)
    if failure is not None:
        failures.append(("production", failure))
    result, failure = _decoded(pair.result, pair.result.body_truncated, limit, memo)
    if failure is not None:
        failures.append(("shadow", failure))
    if request is pair.request and production is pair.production and result is pair.result:
        return pair, failures
    return replace(pair, request=request, production=production, result=result), failures


def decode_observation(observation: Observation, limit: int) -> tuple[Observation, list[Failure]]:
    """A watched request's request and production bodies decoded, as for a pair."""
    memo: Memo = {}
    failures: list[Failure] = []
    request, failure = _decoded(
        observation.request, not observation.request.body_complete, limit, memo
    )
    if failure is not None:
        failures.append(("request", failure))
    production, failure = _decoded(
        observation.production, observation.production.body_truncated, limit, memo
    )
    if failure is not None:
        failures.append(("production", failure))
    return Observation(request=request, production=production), failures


def _decoded(
    record: _Record, partial: bool, limit: int, memo: Memo
) -> tuple[_Record, CodingFailure | None]:
    if not record.content_encoding or not record.body or record.decode_error is not None:
        return record, None
    hit = memo.get(id(record))
    if hit is not None and hit[0] is record:
        decoded: _Record = hit[1]  # type: ignore[assignment]
        return decoded, hit[2]
    try:
        body = decode(record.body, record.content_encoding, limit, partial=partial)
        decoded, failure = replace(record, body=body), None
    except CodingError as exc:
        decoded, failure = replace(record, decode_error=exc.reason), exc.failure
    memo[id(record)] = (record, decoded, failure)
    return decoded, failure
