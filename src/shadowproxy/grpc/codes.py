"""gRPC status codes by name, and the HTTP status each stands for.

The HTTP equivalents are those ``google.rpc.Code`` documents: they go into the
``code`` label of ``shadowproxy_requests_total`` and the ``*_status`` columns, so a
dashboard or report that reads HTTP statuses (5xx rate, 2xx answers) counts gRPC calls
the same way; the exact code name is in ``grpc_status`` beside them. Pure.
"""

from __future__ import annotations

NAMES: tuple[str, ...] = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
"""Indexed by the code's number."""

HTTP_EQUIVALENT: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def http_equivalent(name: str) -> int:
    return HTTP_EQUIVALENT.get(name, 500)


def from_http(status: int) -> str:
    """The gRPC code a proxy answers for an HTTP status (gRPC's own HTTP mapping):
    how a chaos rule's ``abort`` status reaches a gRPC client."""
    return {
        400: "INTERNAL",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "UNIMPLEMENTED",
        429: "UNAVAILABLE",
        502: "UNAVAILABLE",
        503: "UNAVAILABLE",
        504: "UNAVAILABLE",
    }.get(status, "UNKNOWN")
