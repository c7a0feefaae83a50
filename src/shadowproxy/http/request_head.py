"""The request head an upstream call writes, built and checked without I/O.

The client owns body framing (``Content-Length`` or chunked), adds ``Host`` when the
caller did not, and refuses to write anything unsafe: CR, LF or NUL in a header (header
injection), a name or method that is not an HTTP token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

Headers = Sequence[tuple[str, str]]

# aiohttp's rule, kept so the switch changes nothing upstream sees: a request without a
# body sends ``Content-Length: 0`` unless its method has no body by definition.
_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_FRAMING_NAMES: Final = frozenset({"content-length", "transfer-encoding"})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE: Final = re.compile(r"[\r\n\0]")
# Tokens (header names, methods) already checked, with what they are to the client.
# Real traffic repeats a few dozen names, so checking costs one dict lookup; the cap
# keeps a stream of odd names from growing it.
_ORDINARY, _HOST, _FRAMING = 0, 1, 2
_tokens: dict[str, int] = {}
_TOKENS_MAX: Final = 4096


def request_framing(method: str, body: object) -> str | None:
    """The framing header line for ``body``: the client owns framing, never the caller."""
    if body is None:
        return None if method in _BODYLESS_METHODS else "Content-Length: 0"
    if isinstance(body, bytes | bytearray):
        return f"Content-Length: {len(body)}"
    return "Transfer-Encoding: chunked"


def encode_request(
    method: str, target: str, headers: Headers, host: str, framing: str | None
) -> bytes:
    """The request head as bytes; ``ValueError`` if it would be unsafe to write.

    One join and one encode. CR, LF and NUL anywhere but the separators are found by
    counting over the joined text (two C-speed scans) rather than per header. Text is
    encoded UTF-8 with surrogateescape: the inverse of how aiohttp's server decodes
    headers, so a client's header bytes reach the upstream unchanged.
    """
    if method not in _tokens:
        _token_kind(method, "method")
    if not target or " " in target:
        raise ValueError(f"request target {target!r} is empty or contains a space")
    lines = [f"{method} {target} HTTP/1.1"]
    have_host = False
    for name, value in headers:
        kind = _tokens.get(name)
        if kind is None:
            kind = _token_kind(name, "header name")
        if kind:
            if kind == _FRAMING:
                raise ValueError(f"{name} is set from the body; do not pass it")
            have_host = True
        lines.append(f"{name}: {value}")
    if not have_host:
        lines.append(f"Host: {host}")
    if framing is not None:
        lines.append(framing)
    lines += ("", "")
    text = "\r\n".join(lines)
    separators = len(lines) - 1
    if text.count("\n") != separators or text.count("\r") != separators or "\0" in text:
        raise ValueError(_unsafe_part(target, headers))
    return text.encode("utf-8", "surrogateescape")


def _token_kind(text: str, what: str) -> int:
    """Check that ``text`` is a token and remember what kind of name it is."""
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not an HTTP token")
    lower = text.lower()
    kind = _HOST if lower == "host" else _FRAMING if lower in _FRAMING_NAMES else _ORDINARY
    if len(_tokens) < _TOKENS_MAX:
        _tokens[text] = kind
    return kind


def _unsafe_part(target: str, headers: Headers) -> str:
    for name, value in headers:
        if _UNSAFE.search(value):
            return f"header {name!r} contains CR, LF or NUL (header injection)"
    return f"request target {target!r} contains CR, LF or NUL"


def host_header(host: str, port: int, tls: bool) -> str:
    """``Host`` for an origin: the port only when not the scheme's default."""
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if tls else 80) else f"{name}:{port}"
