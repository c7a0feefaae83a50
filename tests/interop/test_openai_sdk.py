"""The official openai SDK through the real CLI proxy: chat and completions, plain and
streamed, embeddings in both encodings, a stream the client abandons, and the time to
the first streamed chunk against a direct connection.

The upstream is ``upstream.py`` (an OpenAI-compatible test server; see its docstring
for why). Production and the shadow are two processes of it; the shadow's embeddings
are nudged so the cosine comparison has something to measure.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.interop.peers import Proxy, cli_proxy, loopback_upstream

requests = pytest.importorskip("requests")
openai = pytest.importorskip(
    "openai", reason="openai does not install here (pip install '.[interop]')"
)

MODEL = "test-model"


@dataclass
class Upstreams:
    production: str
    shadow: str


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    directory = tmp_path_factory.mktemp("openai-upstreams")
    with loopback_upstream(directory, "prod") as production:
        with loopback_upstream(directory, "shadow", perturb=0.01) as shadow:
            yield Upstreams(production, shadow)


def _route(name: str, path: str, preset: str, upstreams: Upstreams) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": path},
        "production": {"url": upstreams.production, "timeout_s": 10},
        "shadows": [{"name": "candidate", "url": upstreams.shadow}],
        "compare": {"prediction": preset},
    }


@pytest.fixture(scope="module")
def proxy(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    routes = [
        _route("chat", "/v1/chat/completions", "openai-chat", upstreams),
        _route("completions", "/v1/completions", "openai-completions", upstreams),
    ]
    with cli_proxy(tmp_path_factory.mktemp("openai-proxy"), routes) as running:
        yield running


@pytest.fixture(scope="module")
def embeddings_proxy(
    upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """Its own proxy: a config naming a preset the proxy lacks must not stop the others."""
    routes = [_route("embeddings", "/v1/embeddings", "openai-embeddings", upstreams)]
    with cli_proxy(tmp_path_factory.mktemp("embeddings-proxy"), routes) as running:
        yield running


def _client(base: str) -> Any:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0, timeout=10)


def _create(client: Any, kind: str, prompt: str, **extra: Any) -> Any:
    if kind == "chat":
        messages = [{"role": "user", "content": prompt}]
        return client.chat.completions.create(model=MODEL, messages=messages, **extra)
    return client.completions.create(model=MODEL, prompt=prompt, **extra)


def _raw(client: Any, kind: str, prompt: str, **extra: Any) -> Any:
    api = client.chat.completions if kind == "chat" else client.completions
    if kind == "chat":
        extra["messages"] = [{"role": "user", "content": prompt}]
    else:
        extra["prompt"] = prompt
    return api.with_raw_response.create(model=MODEL, **extra)


def _text(kind: str, choice: Any) -> str:
    return str(choice.message.content if kind == "chat" else choice.text)


def _piece(kind: str, chunk: Any) -> str:
    if not chunk.choices:
        return ""
    return (chunk.choices[0].delta.content if kind == "chat" else chunk.choices[0].text) or ""


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_a_plain_answer_is_productions_unchanged_and_compared(
    proxy: Proxy, upstreams: Upstreams, kind: str
) -> None:
    request_id = f"plain-{kind}"
    raw = _raw(
        _client(proxy.url),
        kind,
        "what is shadow testing",
        extra_headers={"X-Request-Id": request_id},
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["X-Upstream-Name"] == "prod"
    parsed = raw.parse()
    direct = _create(_client(upstreams.production), kind, "what is shadow testing")
    assert _text(kind, parsed.choices[0]) == _text(kind, direct.choices[0])
    row = proxy.row(request_id)
    assert row["prod_body"] == raw.http_response.content  # byte for byte what the SDK got
    assert row["prod_status"] == 200 and row["shadow_status"] == 200
    assert row["agree"] is True, row["compare_detail"]
    assert json.loads(row["prod_prediction"]) == [_text(kind, parsed.choices[0])]


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_a_streamed_answer_is_productions_unchanged_and_compared(
    proxy: Proxy, upstreams: Upstreams, kind: str
) -> None:
    request_id = f"stream-{kind}"
    stream = _create(
        _client(proxy.url),
        kind,
        "stream it",
        stream=True,
        extra_headers={"X-Request-Id": request_id},
    )
    through_proxy = [_piece(kind, chunk) for chunk in stream]
    direct = [
        _piece(kind, chunk)
        for chunk in _create(_client(upstreams.production), kind, "stream it", stream=True)
    ]
    assert through_proxy == direct and len(direct) > 10  # the same pieces, in order
    row = proxy.row(request_id)
    assert row["prod_content_type"].startswith("text/event-stream")
    assert row["prod_body"].rstrip().endswith(b"data: [DONE]")
    assert row["agree"] is True, row["compare_detail"]
    assert json.loads(row["prod_prediction"]) == ["".join(through_proxy)]


def test_an_abandoned_stream_is_recorded_and_counted_as_client_abandoned(proxy: Proxy) -> None:
    """The SDK closes the stream after the first piece, as a user who stops reading: the
    row says so (not an unexplained incomplete stream) and the request counts as 499."""
    stream = _create(
        _client(proxy.url),
        "chat",
        "stop early",
        stream=True,
        extra_headers={"X-Request-Id": "abandoned"},
    )
    next(iter(stream))
    stream.close()
    row = proxy.row("abandoned")
    assert row["prod_status"] == 200  # what production answered
    assert row["prod_error"] == "client abandoned the stream"
    assert row["agree"] is None and "client abandoned the stream" in row["compare_detail"]
    metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
    abandoned = [
        line
        for line in metrics.splitlines()
        if line.startswith("shadowproxy_requests_total{")
        and 'route="chat"' in line
        and 'code="499"' in line
    ]
    assert abandoned and float(abandoned[0].rsplit(" ", 1)[1]) >= 1, "no 499 counted"


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_embeddings_are_productions_and_compared_by_cosine(
    embeddings_proxy: Proxy, upstreams: Upstreams, encoding: str
) -> None:
    """The SDK asks for base64 unless told otherwise; both encodings must be judged."""
    texts = ["a red apple", "a green pear", "a yellow banana"]
    extra: dict[str, Any] = {} if encoding == "base64" else {"encoding_format": "float"}
    request_id = f"embeddings-{encoding}"
    got = _client(embeddings_proxy.url).embeddings.create(
        model=MODEL, input=texts, extra_headers={"X-Request-Id": request_id}, **extra
    )
    direct = _client(upstreams.production).embeddings.create(model=MODEL, input=texts, **extra)
    assert [list(d.embedding) for d in got.data] == [list(d.embedding) for d in direct.data]
    row = embeddings_proxy.row(request_id)
    sent = json.loads(row["request_body"])
    assert sent.get("encoding_format", "float") == ("base64" if encoding == "base64" else "float")
    assert row["agree"] is True, row["compare_detail"]
    assert row["batch_size"] == len(texts) and row["batch_agree"] == len(texts)
    assert 0 < row["diff_score"] < 0.01  # nudged, not equal: 1 - cosine is small and > 0


def _first_chunk_ms(client: Any) -> float:
    started = time.perf_counter()
    stream = _create(client, "chat", "how fast is the first token", stream=True)
    try:
        for chunk in stream:
            if _piece("chat", chunk):
                return (time.perf_counter() - started) * 1000
    finally:
        stream.close()
    raise AssertionError("the stream had no content")


def test_time_to_first_chunk_through_the_proxy_is_within_5_ms_of_direct(
    proxy: Proxy, upstreams: Upstreams
) -> None:
    direct_client, proxy_client = _client(upstreams.production), _client(proxy.url)
    for client in (direct_client, proxy_client):  # connections open, code paths warm
        _first_chunk_ms(client)
    direct, proxied = [], []
    for _ in range(15):  # alternating, so machine noise falls on both alike
        direct.append(_first_chunk_ms(direct_client))
        proxied.append(_first_chunk_ms(proxy_client))
    difference = statistics.median(proxied) - statistics.median(direct)
    assert difference < 5.0, (
        f"median first chunk: proxy {statistics.median(proxied):.2f} ms, direct {statistics.median(direct):.2f} ms"
    )


def test_the_shadow_got_its_copy_of_every_request(proxy: Proxy) -> None:
    """Sanity for the tier: the rows above are pairs the shadow really answered."""
    rows = proxy.wait_rows(["plain-chat", "plain-completions", "stream-chat", "stream-completions"])
    assert {r["shadow_outcome"] for r in rows} == {"ok"}
    assert all(r["shadow_body"] for r in rows)
