"""Real HTTP clients through the real CLI proxy: curl (an h2c upgrade offer, and
``Expect: 100-continue`` on a large POST), httpx (HTTP/1.1, and ``http2=True`` falling
back to 1.1 on a cleartext URL), requests (a gzip request body, a chunked upload from
a generator) and the JDK's ``java.net.http.HttpClient`` (HTTP/2 by default).

Each checks the status, that the client got production's body byte for byte (the
recorded ``prod_body``), and that the recorded pair was compared. The upstream is the
KServe v1 echo of ``upstream.py``: it answers the sum of each instance and the header
names it received, so a test also sees what reached production.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interop.peers import Proxy, cli_proxy, loopback_upstream, require

httpx = pytest.importorskip(
    "httpx", reason="httpx does not install here (pip install '.[interop]')"
)
requests = pytest.importorskip("requests", reason="requests does not install here")

PATH = "/v1/models/echo:predict"
INSTANCES: list[list[Any]] = [[1, 2, 3], [4, 5, 6], [7.5, 8, 9]]
PREDICTIONS = [6, 15, 24.5]
UPGRADE_HEADERS = {"upgrade", "http2-settings"}


@dataclass
class Setup:
    proxy: Proxy
    directory: Path

    @property
    def url(self) -> str:
        return f"{self.proxy.url}{PATH}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("http-clients")
    with (
        loopback_upstream(directory, "prod") as production,
        loopback_upstream(directory, "shadow") as shadow,
    ):
        route = {
            "name": "echo",
            "match": {"path_prefix": "/v1/models/echo"},
            "production": {"url": production, "timeout_s": 10},
            "shadows": [{"name": "twin", "url": shadow}],
            "compare": {"prediction": "kserve-v1"},
        }
        with cli_proxy(directory / "proxy", [route]) as proxy:
            yield Setup(proxy, directory)


def _check(
    setup: Setup, request_id: str, status: int, body: bytes, predictions: list[Any] | None = None
) -> dict[str, Any]:
    """The status, production's body unchanged, and a compared row that agrees."""
    assert status == 200, body[:300]
    answer = json.loads(body)
    assert answer["predictions"] == (predictions or PREDICTIONS)
    assert not UPGRADE_HEADERS & set(answer["received_headers"]), (
        "an upgrade offer reached production"
    )
    row = setup.proxy.row(request_id)
    assert row["prod_body"] == body
    assert row["prod_status"] == 200 and row["shadow_outcome"] == "ok"
    assert row["agree"] is True, row["compare_detail"]
    return row


def _body(instances: list[list[Any]] = INSTANCES) -> bytes:
    return json.dumps({"instances": instances}).encode()


def _curl(setup: Setup, request_id: str, body: bytes, *options: str) -> tuple[int, str, bytes, str]:
    """curl POSTs the body; returns status, HTTP version, body and curl's verbose log."""
    curl = require("curl")
    name = request_id.replace("/", "-")
    body_file, out_file = setup.directory / f"{name}.json", setup.directory / f"{name}.out"
    body_file.write_bytes(body)
    result = subprocess.run(
        [
            curl, "-sS", "-v", "-X", "POST", *options,
            "-H", "Content-Type: application/json", "-H", f"X-Request-Id: {request_id}",
            "--data-binary", f"@{body_file}", "-o", str(out_file),
            "-w", "%{http_code} %{http_version}", setup.url,
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    status, version = result.stdout.split()
    return int(status), version, out_file.read_bytes(), result.stderr


def test_curl_http2_upgrade_offer_is_served_as_http_1_1(setup: Setup) -> None:
    """``curl --http2`` on http:// sends ``Upgrade: h2c``; a server may ignore the offer."""
    status, version, body, log = _curl(setup, "curl-h2c", _body(), "--http2")
    assert "Upgrade: h2c" in log  # the premise: curl really offered it
    assert version == "1.1"
    _check(setup, "curl-h2c", status, body)


def test_curl_expect_100_continue_on_a_large_post(setup: Setup) -> None:
    instances = [[float(i % 97)] * 1000 for i in range(300)]  # about 1.8 MB of JSON
    body = _body(instances)
    status, _, answer, log = _curl(setup, "curl-expect", body, "-H", "Expect: 100-continue")
    assert "HTTP/1.1 100 Continue" in log  # curl waited for the go-ahead, then sent
    row = _check(setup, "curl-expect", status, answer, [sum(i) for i in instances])
    assert json.loads(answer)["received_bytes"] == len(body)
    assert row["request_body_truncated"] is True  # recorded up to record.max_body_bytes


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2-falls-back"])
def test_httpx(setup: Setup, http2: bool) -> None:
    """httpx negotiates HTTP/2 only through TLS ALPN: on http:// it speaks HTTP/1.1."""
    if http2:
        pytest.importorskip("h2", reason="httpx[http2] needs h2")
    request_id = f"httpx-{'h2' if http2 else 'h1'}"
    with httpx.Client(http2=http2, timeout=10) as client:
        response = client.post(
            setup.url,
            content=_body(),
            headers={"X-Request-Id": request_id, "Content-Type": "application/json"},
        )
    assert response.http_version == "HTTP/1.1"
    _check(setup, request_id, response.status_code, response.content)


def test_requests_gzip_request_body(setup: Setup) -> None:
    """The body travels compressed; the recording keeps it readable, as JSON."""
    plain = _body()
    response = requests.post(
        setup.url,
        data=gzip.compress(plain),
        headers={
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
            "X-Request-Id": "requests-gzip",
        },
        timeout=10,
    )
    row = _check(setup, "requests-gzip", response.status_code, response.content)
    assert row["request_body"] == plain


def test_requests_chunked_upload_from_a_generator(setup: Setup) -> None:
    plain = _body()
    pieces = [plain[i : i + 7] for i in range(0, len(plain), 7)]
    response = requests.post(
        setup.url,
        data=iter(pieces),  # no length known: requests sends Transfer-Encoding: chunked
        headers={"Content-Type": "application/json", "X-Request-Id": "requests-chunked"},
        timeout=10,
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    row = _check(setup, "requests-chunked", response.status_code, response.content)
    assert row["request_body"] == plain


@pytest.mark.timeout(120)  # the source launcher compiles the client first
def test_java_http_client_default_http2(setup: Setup) -> None:
    java = require("java")
    body_file = setup.directory / "java.json"
    body_file.write_bytes(_body())
    client = Path(__file__).with_name("Client.java")
    result = subprocess.run(
        [java, str(client), setup.url, "java-httpclient", str(body_file)],
        capture_output=True, timeout=100,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    status, version, body = result.stdout.split(b"\n", 2)
    assert version == b"HTTP_1_1"  # the proxy declined the upgrade, as RFC 9110 allows
    _check(setup, "java-httpclient", int(status), body)
