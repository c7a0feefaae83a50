from __future__ import annotations

from shadowproxy.http.headers import (
    client_response_headers,
    end_to_end,
    shadow_request_headers,
    upstream_request_headers,
    valid_request_id,
)


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = [
        ("Connection", "close, X-Secret"),
        ("X-Secret", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Trailer", "X-Sum"),
        ("Upgrade", "websocket"),
        ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic x"),
        ("Content-Length", "10"),
        ("Host", "example"),
        ("Authorization", "Bearer kept"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
    ]
    assert end_to_end(headers) == [
        ("Authorization", "Bearer kept"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
    ]
    assert ("Content-Length", "10") in end_to_end(headers, keep_framing=True)


def test_forwarded_headers() -> None:
    out = upstream_request_headers(
        [("X-Forwarded-For", "10.0.0.1"), ("X-Request-Id", "old"), ("Accept", "*/*")],
        request_id="rid",
        client_ip="127.0.0.1",
        scheme="http",
        host="proxy:8080",
    )
    assert out == [
        ("Accept", "*/*"),
        ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "proxy:8080"),
        ("X-Request-Id", "rid"),
    ]
    edge = upstream_request_headers(
        [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "api.example.com")],
        request_id="r",
        client_ip=None,
        scheme="http",
        host="proxy",
    )
    assert ("X-Forwarded-Proto", "https") in edge and ("X-Forwarded-Proto", "http") not in edge
    assert not any(name == "X-Forwarded-For" for name, _ in edge)


def test_shadow_marker_and_response_headers() -> None:
    assert shadow_request_headers([("A", "1")]) == [("A", "1"), ("X-Shadow-Request", "true")]
    out = client_response_headers(
        [("Content-Length", "3"), ("Connection", "keep-alive"), ("X-Request-Id", "up")], "rid"
    )
    assert out == [("X-Request-Id", "rid")]


def test_request_id_validation() -> None:
    assert valid_request_id("abc-123")
    assert not valid_request_id(None)
    assert not valid_request_id("")
    assert not valid_request_id("x" * 129)
    assert not valid_request_id("a\x00b")


def test_shadow_header_rules_drop_case_insensitively_and_replace() -> None:
    production = [("Authorization", "Bearer secret"), ("Cookie", "a=1"), ("X-Env", "prod"),
                  ("Accept", "*/*")]  # fmt: skip
    copy = shadow_request_headers(
        production, frozenset({"authorization", "cookie"}), {"X-Env": "shadow"}
    )
    assert copy == [("Accept", "*/*"), ("X-Env", "shadow"), ("X-Shadow-Request", "true")]
    assert production[0] == ("Authorization", "Bearer secret")  # production untouched
    # No rule can hide that a request is a copy.
    spoofed = shadow_request_headers([("x-shadow-request", "false")], frozenset(), {"X-Other": "1"})
    assert spoofed == [("X-Other", "1"), ("X-Shadow-Request", "true")]
