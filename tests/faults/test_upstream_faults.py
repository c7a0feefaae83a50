"""Upstream faults, each once on the production upstream and once on a shadow.

Production faults: the client gets a 502/504 carrying its request id, or production's
answer unchanged; each request still yields its one row (the healthy shadow's copy,
joined with production's failure). Shadow faults: production's answers and latency do
not change, and each copy's row carries the fault's outcome. Either way the proxy then
serves the next request normally and leaks no file descriptor and no task.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from shadowproxy.records import CLIENT_ABANDONED, ShadowOutcome
from tests.faults.harness import (
    BODY,
    FAST_S,
    FAULT,
    PRODUCTION_TIMEOUT_S,
    Harness,
    exactly_one_row_each,
    fault_proxy,
    no_leaks,
    slug,
    upstream,
)
from tests.faults.upstreams import (
    ANSWER,
    REASONS,
    TICK,
    Behaviour,
    Faulty,
    answers_garbage,
    answers_status,
    closes_on_reuse,
    closes_when_idle,
    drips,
    endless_chunks,
    model,
    never_answers,
    resets_before_headers,
    resets_mid_body,
    resets_mid_stream,
    serve,
    status_body,
)


@dataclass(frozen=True)
class Fault:
    behaviour: Behaviour | None
    """None: nothing listens (connection refused)."""
    client: tuple[str, int]
    """What the client gets when production does this, and the status counted for it:
    ``error`` (a JSON 502/504), ``answer`` (production's answer unchanged), ``cut`` (the
    head, then a cut connection), ``endless`` (chunks passed through until the client
    leaves)."""
    production: tuple[int | None, str | None]
    """The row's production status and (part of) its error, when production does this."""
    shadow: tuple[ShadowOutcome, int | None]
    """The row's outcome and shadow status, when a shadow does this."""
    requests: int = 2
    pause_s: float = 0.0
    """Between requests (time for an idle connection's close to arrive)."""
    counted: int | None = None
    """The status counted, when not the one the client saw (499: the client left)."""


FAULTS = {
    "connection refused": Fault(
        None, ("error", 502), (None, "production unreachable: cannot connect"), ("error", None)
    ),
    "reset before headers": Fault(
        resets_before_headers, ("error", 502), (None, "production unreachable"), ("error", None)
    ),
    # The head had arrived: the row keeps production's status, the error says what broke.
    "reset mid-body (Content-Length)": Fault(
        resets_mid_body, ("error", 502), (200, "production body failed"), ("error", 200)
    ),
    "reset mid-body (chunked, streamed)": Fault(
        resets_mid_stream, ("cut", 200), (200, "production stream failed"), ("error", 200)
    ),
    "accepts and never answers": Fault(
        never_answers, ("error", 504), (None, "did not answer within"), ("timeout", None)
    ),
    "drips one byte a second": Fault(
        drips, ("error", 504), (None, "did not answer within"), ("timeout", None)
    ),
    "answers invalid HTTP": Fault(
        answers_garbage, ("error", 502), (None, "invalid HTTP response"), ("error", None)
    ),
    "answers an endless chunked body": Fault(
        endless_chunks("text/plain"),
        ("endless", 200),
        (200, CLIENT_ABANDONED),
        ("timeout", 200),
        counted=499,
    ),
    "answers 500": Fault(answers_status(500), ("answer", 500), (500, None), ("ok", 500)),
    "answers 503": Fault(answers_status(503), ("answer", 503), (503, None), ("ok", 503)),
    "closes keep-alive connections while idle": Fault(
        closes_when_idle, ("answer", 200), (200, None), ("ok", 200), requests=4, pause_s=0.05
    ),
    "closes keep-alive connections on reuse": Fault(
        closes_on_reuse, ("answer", 200), (200, None), ("ok", 200), requests=4
    ),
}


def cases(side: str) -> list[object]:
    return [
        pytest.param(fault, id=slug(case), marks=pytest.mark.fault_matrix(side, case))
        for case, fault in FAULTS.items()
    ]


# --- production --------------------------------------------------------------------------


@pytest.mark.parametrize("fault", cases("production"))
async def test_production_fault(tmp_path: Path, fault: Fault) -> None:
    ids = [f"prod-{n}" for n in range(fault.requests)]
    async with no_leaks():
        async with upstream(fault.behaviour) as production, serve(model) as copies:
            async with fault_proxy(tmp_path, production.url, copies.url) as harness:
                kind, code = fault.client
                for request_id in ids:
                    await CLIENT_SEES[kind](harness, production, request_id, code)
                    await asyncio.sleep(fault.pause_s)
                if kind != "answer":
                    # No connection that failed is kept for the next request.
                    await production.all_closed()
                await harness.serves_next_request()
                counted = harness.proxy.metric(
                    "shadowproxy_requests_total", route="fault", code=str(fault.counted or code)
                )
                assert counted == len(ids)
        # The proxy has stopped: every copy has ended and been handed to the sink.
        pairs = harness.fault_rows()
        status, error = fault.production
        for row in exactly_one_row_each(pairs, ids):
            assert row.result.outcome == "ok", row.result
            assert row.production.status == status, row.production
            if error is None:
                assert row.production.error is None, row.production
            else:
                assert error in (row.production.error or ""), row.production
        assert len(copies.requests) == len(ids)
        if kind == "answer":
            # A request the upstream closed on was sent again, but never answered twice.
            assert production.answered == len(ids)


async def gets_json_error(harness: Harness, production: Faulty, request_id: str, code: int) -> None:
    reply = await harness.post(FAULT, request_id)
    assert reply.status == code, reply
    assert reply.headers["X-Request-Id"] == request_id
    assert reply.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(reply.body)
    assert body["status"] == code and body["request_id"] == request_id, body
    assert body["error"]
    if code == 504:
        assert PRODUCTION_TIMEOUT_S * 0.95 <= reply.seconds < PRODUCTION_TIMEOUT_S + 1.0
    else:
        assert reply.seconds < PRODUCTION_TIMEOUT_S  # reported at once, not timed out


async def gets_production_answer(
    harness: Harness, production: Faulty, request_id: str, code: int
) -> None:
    reply = await harness.post(FAULT, request_id)
    assert reply.status == code, reply
    assert reply.reason == REASONS[code]
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["X-Request-Id"] == request_id
    if code == 200:
        assert reply.body == ANSWER
    else:
        assert reply.body == status_body(code)
        assert reply.headers["X-Model-State"] == "degraded"


async def gets_cut_stream(harness: Harness, production: Faulty, request_id: str, code: int) -> None:
    headers = {"X-Request-Id": request_id}
    async with harness.session.post(harness.proxy.url + FAULT, data=BODY, headers=headers) as resp:
        assert resp.status == code
        assert await resp.content.readexactly(len(TICK % 0)) == TICK % 0
        # Production failed after its head went out: the client must see a cut, not an end.
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def leaves_endless_stream(
    harness: Harness, production: Faulty, request_id: str, code: int
) -> None:
    expected = b"".join(TICK % number for number in range(20))
    headers = {"X-Request-Id": request_id}
    async with harness.session.post(harness.proxy.url + FAULT, data=BODY, headers=headers) as resp:
        assert resp.status == code
        assert resp.headers["Content-Type"] == "text/plain"
        assert await resp.content.readexactly(len(expected)) == expected
        resp.close()  # the client has seen enough
    # ... and the proxy stops reading production for it.
    await production.all_closed()


CLIENT_SEES = {
    "error": gets_json_error,
    "answer": gets_production_answer,
    "cut": gets_cut_stream,
    "endless": leaves_endless_stream,
}


# --- shadow ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", cases("shadow"))
async def test_shadow_fault(tmp_path: Path, fault: Fault) -> None:
    ids = [f"copy-{n}" for n in range(fault.requests)]
    outcome, shadow_status = fault.shadow
    async with no_leaks():
        async with serve(model) as production, upstream(fault.behaviour) as shadow:
            async with fault_proxy(tmp_path, production.url, shadow.url) as harness:
                for request_id in ids:
                    reply = await harness.post(FAULT, request_id)
                    assert (reply.status, reply.body) == (200, ANSWER), reply
                    assert reply.headers["Content-Type"] == "application/json"
                    assert reply.headers["X-Request-Id"] == request_id
                    # Production never waits for the copy (which takes 1 s or fails).
                    assert reply.seconds < FAST_S, reply
                    await asyncio.sleep(fault.pause_s)
                for request_id in ids:
                    await harness.rows(request_id, 1)
                if outcome != "ok":
                    # A copy that failed or timed out does not keep its connection.
                    await shadow.all_closed()
                await harness.serves_next_request()
        pairs = harness.fault_rows()
        for row in exactly_one_row_each(pairs, ids):
            assert (row.result.outcome, row.result.status) == (outcome, shadow_status), row.result
            assert row.production.status == 200 and row.production.error is None
            assert row.production.body == ANSWER
        assert production.answered == len(ids)
