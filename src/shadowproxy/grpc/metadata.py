"""Which gRPC metadata goes where: the pure rules (the HTTP ones are ``http.headers``).

Metadata keys arrive lower-case. Keys the transport owns are never forwarded: HTTP/2
pseudo-headers (``:authority``), ``grpc-*`` (deadline, encoding, status: each call sets
its own), and the connection's own (``te``, ``content-type``, ``user-agent``, hop-by-hop
names). ``x-request-id`` is the proxy's: taken from the client when valid, else made
up, sent to every upstream and returned in the initial metadata. Values of ``-bin``
keys are bytes and pass through as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shadowproxy.http.headers import new_request_id, valid_request_id

Metadata = list[tuple[str, str | bytes]]

REQUEST_ID = "x-request-id"
SHADOW_MARKER = "x-shadow-request"
CONNECTION_KEYS = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
        "te", "host", "content-type", "user-agent", "content-length",
    }
)  # fmt: skip


def forwarded(key: str) -> bool:
    return not (key.startswith((":", "grpc-")) or key in CONNECTION_KEYS)


def request_id_of(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The client's ``x-request-id`` when valid, else a new one."""
    for key, value in metadata:
        if key == REQUEST_ID and isinstance(value, str) and valid_request_id(value):
            return value
    return new_request_id()


def upstream_metadata(metadata: Iterable[tuple[str, str | bytes]], request_id: str) -> Metadata:
    """What production gets: the client's metadata, minus transport keys, plus the id."""
    out: Metadata = [(k, v) for k, v in metadata if forwarded(k) and k != REQUEST_ID]
    out.append((REQUEST_ID, request_id))
    return out


def shadow_metadata(
    production: Metadata, drop: frozenset[str], replace: Mapping[str, str]
) -> Metadata:
    """A shadow copy's metadata: production's, the shadow's rules applied (``headers:``
    of the shadow config, names matched case-insensitively), and the marker last, so no
    rule can hide that a call is a copy."""
    removed = drop | {name.lower() for name in replace} | {SHADOW_MARKER}
    kept = [(key, value) for key, value in production if key not in removed]
    return [*kept, *((name.lower(), value) for name, value in replace.items()),
            (SHADOW_MARKER, "true")]  # fmt: skip


def client_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None, request_id: str
) -> tuple[tuple[str, str | bytes], ...]:
    """Production's initial metadata for the client, with the request id (a tuple:
    what gRPC's server takes)."""
    kept = [(k, v) for k, v in metadata or () if forwarded(k) and k != REQUEST_ID]
    return (*kept, (REQUEST_ID, request_id))


def trailing_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> tuple[tuple[str, str | bytes], ...]:
    """Production's trailing metadata for the client: all of it but transport keys
    (a tuple: what gRPC's server takes)."""
    return tuple((k, v) for k, v in metadata or () if forwarded(k))
