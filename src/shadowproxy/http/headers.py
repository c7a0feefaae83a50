"""Header rules for forwarding: what production and shadows receive, what the client gets.

Pure functions over ``(name, value)`` pairs so they can be tested without a socket.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

REQUEST_ID = "X-Request-Id"
SHADOW_MARKER = "X-Shadow-Request"

Headers = list[tuple[str, str]]

# RFC 9110 section 7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE,
# Transfer-Encoding and Upgrade; the Proxy-Auth* pair and Trailer were hop-by-hop in
# RFC 2616 and proxies still treat them so; HTTP2-Settings belongs to an h2c upgrade
# offer (RFC 7540 section 3.2.1), which the listener ignores. One name per line: a
# missing comma would silently join two names (ruff ISC guards this too).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "http2-settings",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Recomputed by the HTTP layer for the body actually sent.
_FRAMING = frozenset({"content-length", "host"})

_MAX_REQUEST_ID = 128


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Header names listed in ``Connection``: hop-by-hop for this hop only."""
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(tokens)


def end_to_end(headers: Iterable[tuple[str, str]], *, keep_framing: bool = False) -> Headers:
    """Drop hop-by-hop headers (fixed ones and those named in ``Connection``)."""
    pairs = list(headers)
    drop = HOP_BY_HOP | connection_tokens(pairs)
    if not keep_framing:
        drop = drop | _FRAMING
    return [(name, value) for name, value in pairs if name.lower() not in drop]


def valid_request_id(value: str | None) -> bool:
    """A client's id is kept only when it is short and printable (it ends up in logs)."""
    return value is not None and 0 < len(value) <= _MAX_REQUEST_ID and value.isprintable()


def new_request_id() -> str:
    return os.urandom(16).hex()


def upstream_request_headers(
    headers: Iterable[tuple[str, str]],
    *,
    request_id: str,
    client_ip: str | None,
    scheme: str,
    host: str | None,
) -> Headers:
    """Headers for the production call: end-to-end ones plus ``X-Forwarded-*``.

    ``X-Forwarded-For`` gets the client appended; ``-Proto`` and ``-Host`` are kept
    when an edge proxy in front already set them (they describe the original request),
    else set from this hop. ``Host`` is left to the HTTP client (the upstream's host).
    """
    out: Headers = []
    forwarded_for: str | None = None
    have_proto = have_host = False
    for name, value in end_to_end(headers):
        lower = name.lower()
        if lower == "x-forwarded-for":
            forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        if lower == "x-request-id":
            continue
        have_proto = have_proto or lower == "x-forwarded-proto"
        have_host = have_host or lower == "x-forwarded-host"
        out.append((name, value))
    if client_ip:
        forwarded_for = f"{forwarded_for}, {client_ip}" if forwarded_for else client_ip
    if forwarded_for:
        out.append(("X-Forwarded-For", forwarded_for))
    if not have_proto:
        out.append(("X-Forwarded-Proto", scheme))
    if not have_host and host:
        out.append(("X-Forwarded-Host", host))
    out.append((REQUEST_ID, request_id))
    return out


def shadow_request_headers(
    production_headers: Headers,
    drop: frozenset[str] = frozenset(),
    replace: Mapping[str, str] | None = None,
) -> Headers:
    """The shadow copy carries what production got, plus the marker.

    ``drop`` holds lower-case names removed from the copy (credentials a shadow run by
    another team need not see); ``replace`` sets headers, replacing the client's value.
    The marker is always set last, so no rule can hide that a request is a copy.
    """
    replace = replace or {}
    removed = drop | {name.lower() for name in replace} | {SHADOW_MARKER.lower()}
    if not drop and not replace:
        return [*production_headers, (SHADOW_MARKER, "true")]
    kept = [(name, value) for name, value in production_headers if name.lower() not in removed]
    return [*kept, *replace.items(), (SHADOW_MARKER, "true")]


def client_response_headers(headers: Iterable[tuple[str, str]], request_id: str) -> Headers:
    """Production's headers for the client, minus hop-by-hop ones, with the request id."""
    out = [(name, value) for name, value in end_to_end(headers) if name.lower() != "x-request-id"]
    out.append((REQUEST_ID, request_id))
    return out
