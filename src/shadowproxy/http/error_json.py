"""The JSON error answer, the same from the listener (a refused head) and the handler
(production unreachable, a timeout, a bad body): ``{"error", "status", "request_id"}``
with the request id echoed in its header, so a client can quote it in a bug report."""

from __future__ import annotations

from http import HTTPStatus

import orjson

from shadowproxy.http.headers import REQUEST_ID

REASONS = {status.value: status.phrase for status in HTTPStatus}
"""Reason phrases for the status line; codes outside the standard (499) say "Error"."""


def error_answer(
    status: int, message: str, request_id: str
) -> tuple[str, list[tuple[str, str]], bytes]:
    """The reason phrase, headers and body of a JSON error answer."""
    body = orjson.dumps({"error": message, "status": status, "request_id": request_id})
    headers = [("Content-Type", "application/json"), (REQUEST_ID, request_id)]
    return REASONS.get(status, "Error"), headers, body
