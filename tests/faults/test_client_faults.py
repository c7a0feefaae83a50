"""Client faults: clients that leave early, dawdle, or send what must not be forwarded.

A request that is malformed or ambiguous is rejected by the proxy and never reaches
production or a shadow (no connection is even opened), so it has no row: only sampled
requests have one. A client that leaves early costs its own request and nothing else.
Every case ends with the proxy serving the next request normally and with no file
descriptor or task left behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from shadowproxy.records import CLIENT_ABANDONED
from tests.faults.harness import (
    BODY,
    FAST_S,
    FAULT,
    HEALTHY,
    Harness,
    exactly_one_row_each,
    fault_proxy,
    no_leaks,
    parse_reply,
    send_raw,
    slug,
)
from tests.faults.upstreams import ANSWER, PIECE, TICK, chunk, model, serve

ROUTE = "/v1/models/fault"
CAP = 1024
"""``max_body_bytes`` for the cases where a body over it is streamed to production."""


def request(head: str, body: bytes = b"", target: str = FAULT, method: str = "POST") -> bytes:
    """A request with the given header lines (``\\r\\n``-separated), written as is."""
    return f"{method} {target} HTTP/1.1\r\nHost: proxy\r\n{head}\r\n\r\n".encode() + body


def matrix(case: str, xfail: str | None = None) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.fault_matrix("client", case)]
    if xfail is not None:
        marks.append(pytest.mark.xfail(strict=True, reason=xfail))
    return marks


async def leave_after(harness: Harness, data: bytes, after_s: float) -> None:
    """Send ``data``, wait, then vanish with a reset."""
    host, port = harness.proxy.server.proxy_address or ("", 0)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.transport.abort()


# --- rejected: never forwarded ----------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    parts: tuple[bytes, ...]
    """Written 0.3 s apart, so the proxy has started on the first before the next."""
    status: int
    max_body_bytes: int | None = None


SMUGGLED = b"GET /v1/models/fault:smuggled HTTP/1.1\r\nHost: proxy\r\n\r\n"
HEAD_CHUNKED = "Transfer-Encoding: chunked"
HUGE = "X-Huge: " + "a" * 70 * 1024
MANY = "\r\n".join(f"X-Pad-{n:03d}: {'b' * 1000}" for n in range(100))

REJECTED = [
    ("conflicting Content-Length and Transfer-Encoding (CL first)",
     Bad((request(f"Content-Length: 5\r\n{HEAD_CHUNKED}", b"0\r\n\r\n" + SMUGGLED),), 400)),
    ("conflicting Content-Length and Transfer-Encoding (TE first)",
     Bad((request(f"{HEAD_CHUNKED}\r\nContent-Length: 46", b"0\r\n\r\n" + SMUGGLED),), 400)),
    ("two different Content-Lengths",
     Bad((request("Content-Length: 5\r\nContent-Length: 6", b"hello!"),), 400)),
    ("Transfer-Encoding that does not end in chunked",
     Bad((request("Transfer-Encoding: chunked, gzip", b"0\r\n\r\n"),), 400)),
    ("Transfer-Encoding with a space before the colon",
     Bad((request("Transfer-Encoding : chunked", b"0\r\n\r\n"),), 400)),
    ("oversized header (one field of 70 KiB)",
     Bad((request(f"{HUGE}\r\nConnection: close", method="GET"),), 431)),
    ("oversized headers (100 fields, 100 KiB in all)",
     Bad((request(f"{MANY}\r\nConnection: close", method="GET"),), 431)),
    ("invalid chunked encoding (chunk size not hex)",
     Bad((request(HEAD_CHUNKED, b"zz\r\nhello\r\n0\r\n\r\n"),), 400)),
    ("invalid chunked encoding (chunk longer than its size)",
     Bad((request(HEAD_CHUNKED, b"3\r\nhello\r\n0\r\n\r\n"),), 400)),
    ("invalid chunked encoding after the body started",
     Bad((request(HEAD_CHUNKED, chunk(b"a" * 16)), b"zz\r\n\r\n"), 400)),
    ("invalid chunked encoding after the body started streaming to production",
     Bad((request(HEAD_CHUNKED, chunk(b"a" * 2 * CAP)), b"zz\r\n\r\n"), 400, CAP)),
    ("CRLF injection: bare CR in a header value",
     Bad((request("X-Note: a\rInjected: 1", method="GET"),), 400)),
    ("CRLF injection: bare LF in a header value",
     Bad((request("X-Note: a\nInjected: 1", method="GET"),), 400)),
    ("CRLF injection: NUL in a header value",
     Bad((request("X-Note: a\0Injected: 1", method="GET"),), 400)),
    ("CRLF injection: obsolete line folding",
     Bad((request("X-Note: a\r\n Injected: 1", method="GET"),), 400)),
]  # fmt: skip
KNOWN: dict[str, str] = {}
"""Cases the proxy does not meet yet: case -> reason (run as strict xfails)."""


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(bad, id=slug(case), marks=matrix(case, KNOWN.get(case)))
        for case, bad in REJECTED
    ],
)
async def test_rejected_and_never_forwarded(tmp_path: Path, bad: Bad) -> None:
    extra = {} if bad.max_body_bytes is None else {"max_body_bytes": bad.max_body_bytes}
    async with no_leaks():
        async with serve(model) as production, serve(model) as copies:
            async with fault_proxy(tmp_path, production.url, copies.url, **extra) as harness:
                raw = await send_raw(harness, *bad.parts, pause_s=0.3)
                # An answer, then the connection closed: nothing after the bad request
                # (a smuggled second one included) is read as a request.
                assert parse_reply(raw).status == bad.status, raw[:300]
                await harness.serves_next_request()
        assert production.requests == [] and copies.accepted == 0
        if bad.max_body_bytes is None:
            assert production.accepted == 0  # not even a connection was opened
            assert harness.fault_rows() == []
        else:
            # Streaming had begun: the request is on record, and why it failed.
            (row,) = harness.fault_rows()
            assert (row.result.outcome, row.result.error) == ("skipped", "body_too_large")
            assert (row.production.error or "").startswith("request body unreadable")


# --- forwarded: within the limits, or harmless ------------------------------------------


@pytest.mark.fault_matrix("client", "large headers under the limit (50 fields, 50 KiB)")
async def test_large_headers_under_the_limit_are_forwarded_whole(tmp_path: Path) -> None:
    """Forwarded whole to production and the shadow."""
    fields = "\r\n".join(f"X-Pad-{n:03d}: {'c' * 1000}" for n in range(50))
    async with no_leaks():
        async with serve(model) as production, serve(model) as copies:
            async with fault_proxy(tmp_path, production.url, copies.url) as harness:
                raw = await send_raw(
                    harness, request(f"{fields}\r\nX-Request-Id: big\r\nConnection: close")
                )
                reply = parse_reply(raw)
                assert (reply.status, reply.body) == (200, ANSWER)
                await harness.serves_next_request()
        for seen in (production.requests[0], copies.requests[0]):
            assert seen.count(b"\r\nX-Pad-") == 50 and b"c" * 1000 + b"\r\n" in seen
        (row,) = exactly_one_row_each(harness.fault_rows(), ["big"])
        assert row.result.outcome == "ok"


@pytest.mark.fault_matrix("client", "CRLF injection: percent-encoded CRLF in the path")
async def test_encoded_crlf_in_the_path_is_forwarded_encoded(tmp_path: Path) -> None:
    """Forwarded still encoded: no header is injected."""
    target = ROUTE + "%0d%0aInjected:%201"
    async with no_leaks():
        async with serve(model) as production, serve(model) as copies:
            async with fault_proxy(tmp_path, production.url, copies.url) as harness:
                head = "X-Request-Id: encoded\r\nConnection: close"
                reply = parse_reply(await send_raw(harness, request(head, target=target)))
                assert (reply.status, reply.body) == (200, ANSWER)
                await harness.serves_next_request()
        for seen in (production.requests[0], copies.requests[0]):
            head_lines = seen.split(b"\r\n\r\n")[0].split(b"\r\n")
            assert head_lines[0] == f"POST {target} HTTP/1.1".encode()
            assert not any(line.lower().startswith(b"injected") for line in head_lines)
        (row,) = exactly_one_row_each(harness.fault_rows(), ["encoded"])
        assert row.result.outcome == "ok"


# --- clients that leave early ------------------------------------------------------------


@pytest.mark.fault_matrix("client", "disconnects mid-request-body")
async def test_client_leaving_mid_body_is_never_forwarded(tmp_path: Path) -> None:
    """Never forwarded: production and the shadow see nothing, and there is no row."""
    async with no_leaks():
        async with serve(model) as production, serve(model) as copies:
            async with fault_proxy(tmp_path, production.url, copies.url) as harness:
                await leave_after(harness, request("Content-Length: 1000", b"a" * 100), 0.2)
                await asyncio.sleep(0.2)
                await harness.serves_next_request()
        # Half a request is not a request: production and the shadow never see it.
        assert production.accepted == 0 and copies.accepted == 0
        assert harness.fault_rows() == []


@pytest.mark.fault_matrix(
    "client",
    "disconnects mid-request-body (streamed to production, over max_body_bytes)",
)
async def test_client_leaving_mid_streamed_body(tmp_path: Path) -> None:
    """No 502 counted; the row says ``client disconnected``."""
    head = request("X-Request-Id: upload\r\nContent-Length: 100000", b"a" * 3 * CAP)
    async with no_leaks():
        async with serve(model) as production, serve(model) as copies:
            async with fault_proxy(
                tmp_path, production.url, copies.url, max_body_bytes=CAP
            ) as harness:
                await leave_after(harness, head, 0.3)
                await production.all_closed()
                (row,) = exactly_one_row_each(await harness.rows("upload", 1), ["upload"])
                await harness.serves_next_request()
                counted = harness.proxy.metric(
                    "shadowproxy_requests_total", route="fault", code="502"
                )
        # Production saw the start of the upload and never a complete request.
        assert production.requests == [] and production.partial == 1
        assert copies.accepted == 0
        assert (row.result.outcome, row.result.error) == ("skipped", "body_too_large")
        assert row.production.error == "client disconnected", row.production
        assert counted == 0  # the client left: production did not fail


@pytest.mark.fault_matrix("client", "disconnects while production is answering")
async def test_client_leaving_before_the_answer(tmp_path: Path) -> None:
    """Production's answer is recorded and compared; the row says ``client disconnected``."""
    slow = request(f"X-Request-Id: gone\r\nContent-Length: {len(BODY)}", BODY, ROUTE + ":slow")
    async with no_leaks():
        async with serve(model) as production, serve(model) as copies:
            async with fault_proxy(tmp_path, production.url, copies.url) as harness:
                await leave_after(harness, slow, 0.1)
                (row,) = await harness.rows("gone", 1)
                await harness.serves_next_request()
        assert row.production.status == 200 and row.production.error == "client disconnected"
        assert row.result.outcome == "ok"
        assert production.answered == 1 and len(copies.requests) == 1


@pytest.mark.parametrize(
    ("suffix", "first", "copy"),
    [
        # The shadow gets the same request: it keeps its first 1 MiB of the 8 MiB...
        pytest.param(
            ":large",
            b"x" * PIECE,
            "ok",
            id="mid-response",
            marks=matrix("disconnects mid-response (8 MiB body)"),
        ),
        # ... and never sees the end of the endless stream.
        pytest.param(
            ":stream",
            b"".join(TICK % n for n in range(3)),
            "timeout",
            id="mid-sse",
            marks=matrix("disconnects mid-SSE"),
        ),
    ],
)
async def test_client_leaving_mid_response(
    tmp_path: Path, suffix: str, first: bytes, copy: str
) -> None:
    """Counted as 499; the row keeps production's status and what arrived, and says
    ``client abandoned the stream``; the proxy stops reading production and is unaffected."""
    async with no_leaks():
        async with serve(model) as production, serve(model) as copies:
            async with fault_proxy(tmp_path, production.url, copies.url) as harness:
                url = harness.proxy.url + ROUTE + suffix
                headers = {"X-Request-Id": "leaver"}
                async with harness.session.post(url, data=BODY, headers=headers) as resp:
                    assert resp.status == 200
                    assert await resp.content.readexactly(len(first)) == first
                    resp.close()
                # The proxy stops reading production's answer for a client that left.
                await production.all_closed()
                await harness.rows("leaver", 1)
                await harness.serves_next_request()
                counted = {
                    code: harness.proxy.metric(
                        "shadowproxy_requests_total", route="fault", code=code
                    )
                    for code in ("200", "499")
                }
        (row,) = exactly_one_row_each(harness.fault_rows(), ["leaver"])
        # Production answered 200; the client left mid-stream, which is what is counted.
        assert row.production.status == 200 and row.production.error == CLIENT_ABANDONED
        assert counted == {"200": 0, "499": 1}
        assert row.production.body.startswith(first)
        assert row.result.outcome == copy, row.result


# --- clients that dawdle -----------------------------------------------------------------


@pytest.mark.fault_matrix("client", "sends headers one byte at a time (slowloris)")
async def test_slowloris_does_not_hold_up_others(tmp_path: Path) -> None:
    """Bounded by ``client_header_timeout_s``; other clients are served as usual meanwhile."""
    head = request(f"X-Request-Id: slow\r\nConnection: close\r\nContent-Length: {len(BODY)}")
    async with no_leaks():
        async with serve(model) as production, serve(model) as copies:
            async with fault_proxy(tmp_path, production.url, copies.url) as harness:

                async def slow_client() -> bytes:
                    drip = [head[n : n + 1] for n in range(len(head))]
                    return await send_raw(harness, *drip, BODY, pause_s=0.005, within_s=10)

                async def others() -> list[float]:
                    seconds = []
                    for n in range(8):
                        reply = await harness.post(HEALTHY, f"other-{n}")
                        assert (reply.status, reply.body) == (200, ANSWER)
                        seconds.append(reply.seconds)
                        await asyncio.sleep(0.05)
                    return seconds

                raw, seconds = await asyncio.gather(slow_client(), others())
                # Others were served as usual while the slow head trickled in.
                assert max(seconds) < FAST_S, seconds
                reply = parse_reply(raw)
                assert (reply.status, reply.body) == (200, ANSWER)
                assert reply.headers["X-Request-Id"] == "slow"
                await harness.serves_next_request()
        assert production.requests[0].endswith(BODY) and len(production.requests) == 1
        (row,) = exactly_one_row_each(harness.fault_rows(), ["slow"])
        assert row.result.outcome == "ok"
