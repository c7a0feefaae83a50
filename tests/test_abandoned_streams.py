"""A client that stops reading a streamed answer: counted as 499, recorded as abandoned.

The proxy stops reading production's stream when the client leaves (an LLM server
would otherwise go on generating tokens nobody reads), so the pair is incomplete: its
row says the client abandoned the stream and is left out of the comparison, and
``/metrics`` counts the request under 499, not under production's 200. Real SSE
servers on loopback, the real proxy with the real recorder, the Parquet read back.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from shadowproxy.records import CLIENT_ABANDONED
from tests.support import route, upstream, write_config

TOKENS = 30
CHAT = "/v1/chat/completions"


class SlowModel:
    """An OpenAI-style chat server streaming one token per ``pause_s``; remembers how
    many tokens each request got out before its reader went away."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s
        self.sent: dict[str, int] = {}

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers["X-Request-Id"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.sent[request_id] = 0
        for n in range(TOKENS):
            delta = {"choices": [{"index": 0, "delta": {"content": f"t{n} "}}]}
            try:
                await response.write(b"data: " + orjson.dumps(delta) + b"\n\n")
            except ConnectionError:
                return response  # the reader left: stop generating
            self.sent[request_id] += 1
            await asyncio.sleep(self.pause_s)
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(b"data: " + orjson.dumps(done) + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """One series' value from a Prometheus text exposition (None when absent)."""
    for line in exposition.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match is None or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if found == labels:
            return float(match[3])
    return None


@pytest.mark.timeout(30)
async def test_abandoned_sse_stream_is_a_499_and_an_incomparable_row_saying_why(
    tmp_path: Path,
) -> None:
    production, shadow = SlowModel(pause_s=0.03), SlowModel(pause_s=0.0)
    async with upstream(production) as prod, upstream(shadow) as copy:
        compare = {"prediction": "openai-chat", "kind": "text"}
        shadows = [{"name": "s", "url": copy.url}]
        config_path = write_config(
            tmp_path, [route("chat", prod.url, shadows, prefix="/v1/chat", compare=compare)]
        )
        config = load_config(config_path)
        metrics = Metrics(CollectorRegistry())
        comparer = Comparer(config.routes)
        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
        server = Server(config, metrics, recorder, recorder, comparer.auto_choices)
        await server.start()
        try:
            host, port = server.proxy_address  # type: ignore[misc]
            admin_host, admin_port = server.admin_address  # type: ignore[misc]
            url = f"http://{host}:{port}{CHAT}"
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as session:
                # One client reads the whole answer, one leaves after two tokens.
                headers = {"X-Request-Id": "whole"}
                async with session.post(url, json=body, headers=headers) as response:
                    whole = await response.read()
                headers = {"X-Request-Id": "gone"}
                async with session.post(url, json=body, headers=headers) as response:
                    assert response.status == 200
                    await response.content.readuntil(b"\n\n")
                    await response.content.readuntil(b"\n\n")
                    response.close()
                for _ in range(200):
                    async with session.get(f"http://{admin_host}:{admin_port}/metrics") as r:
                        exposition = await r.text()
                    if sample(exposition, "shadowproxy_comparisons_total", route="chat",
                              shadow="s", result="incomparable"):  # fmt: skip
                        break
                    await asyncio.sleep(0.05)
        finally:
            await server.stop()

    assert whole.endswith(b"data: [DONE]\n\n")
    # The proxy let go of production's stream soon after the client left.
    assert production.sent["whole"] == TOKENS and production.sent["gone"] < TOKENS // 2
    counted = {
        code: sample(
            exposition, "shadowproxy_requests_total", route="chat", code=code, grpc_status=""
        )
        for code in ("200", "499")
    }
    assert counted == {"200": 1.0, "499": 1.0}
    verdicts = {
        result: sample(exposition, "shadowproxy_comparisons_total", route="chat", shadow="s",
                       result=result)
        for result in ("agree", "incomparable")
    }  # fmt: skip
    assert verdicts == {"agree": 1.0, "incomparable": 1.0}

    rows = {
        row["request_id"]: row for row in read_dataset(str(tmp_path / "shadow-logs")).to_pylist()
    }
    assert rows["whole"]["agree"] is True and rows["whole"]["prod_error"] is None
    gone = rows["gone"]
    assert gone["prod_status"] == 200  # what production answered; the client got a part
    assert gone["prod_error"] == CLIENT_ABANDONED == "client abandoned the stream"
    assert gone["agree"] is None and gone["diff_score"] is None
    assert gone["prod_prediction"] is None
    assert CLIENT_ABANDONED in gone["compare_detail"]
    assert gone["shadow_outcome"] == "ok" and gone["shadow_prediction"] is not None
