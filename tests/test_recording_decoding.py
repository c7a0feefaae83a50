"""Compressed bodies through the recorder: decoded before redaction and comparison,
recorded decoded with the encoding as sent, and refused (counted, with a reason) when
they cannot be decoded. Real Parquet read back; pairs built directly (no proxy)."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import brotli
import orjson
from backports import zstd
from prometheus_client import CollectorRegistry

from shadowproxy.compare import Comparer
from shadowproxy.config import RouteConfig
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from shadowproxy.recording.decoding import Memo, decode_pair
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult
from tests.test_content_coding import gzip_bomb
from tests.test_recording import SSN, TS, settings

REQUEST = orjson.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]], "customer": {"ssn": SSN}})
PROD = orjson.dumps({"predictions": [0], "model_version": "1"})
SHADOW = orjson.dumps({"predictions": [0], "model_version": "2"})


def make_route(**extra: Any) -> RouteConfig:
    return RouteConfig.model_validate(
        {
            "name": "iris",
            "match": {"path_prefix": "/iris"},
            "production": {"url": "http://127.0.0.1:1"},
            "shadows": [{"name": "tree", "url": "http://127.0.0.1:2"}],
            "compare": {"prediction": "kserve-v1", "kind": "label"},
            **extra,
        }
    )


def make_pair(
    n: int = 0,
    *,
    request: tuple[bytes, str | None] = (REQUEST, None),
    prod: tuple[bytes, str | None] = (PROD, None),
    shadow: tuple[bytes, str | None] = (SHADOW, None),
    prod_truncated: bool = False,
) -> Pair:
    info = RequestInfo(
        request_id=f"req-{n}",
        ts=TS,
        route="iris",
        method="POST",
        path="/iris",
        query="",
        headers=[],
        body=request[0],
        body_complete=True,
        content_encoding=request[1],
    )
    production = ProductionResult(
        status=200,
        latency_ms=5.0,
        error=None,
        body=prod[0],
        body_truncated=prod_truncated,
        content_type="application/json",
        chaos=None,
        content_encoding=prod[1],
    )
    result = ShadowResult(
        outcome="ok",
        status=200,
        latency_ms=7.0,
        error=None,
        body=shadow[0],
        body_truncated=False,
        content_type="application/json",
        chaos=None,
        content_encoding=shadow[1],
    )
    return Pair(request=info, shadow="tree", role="candidate", production=production, result=result)


# --- decode_pair: the pure step -----------------------------------------------------------


def test_each_body_is_decoded_by_its_own_encoding() -> None:
    pair = make_pair(
        request=(gzip.compress(REQUEST), "gzip"),
        prod=(brotli.compress(PROD), "br"),
        shadow=(zstd.compress(brotli.compress(SHADOW)), "br, zstd"),
    )
    decoded, failures = decode_pair(pair, 1 << 20)
    assert failures == []
    assert (decoded.request.body, decoded.production.body, decoded.result.body) == (
        REQUEST,
        PROD,
        SHADOW,
    )
    # The encoding as sent stays, for the record; nothing failed.
    assert decoded.request.content_encoding == "gzip"
    assert decoded.result.content_encoding == "br, zstd"
    assert decoded.production.decode_error is None


def test_plain_pairs_pass_through_untouched() -> None:
    pair = make_pair()
    assert decode_pair(pair, 1 << 20) == (pair, [])
    assert decode_pair(pair, 1 << 20)[0] is pair


def test_a_body_that_cannot_be_decoded_stays_as_sent_with_its_reason() -> None:
    broken = gzip.compress(PROD)[:-12]
    pair = make_pair(prod=(broken, "gzip"), shadow=(b"\x04\x22\x4d\x18", "lz4"))
    decoded, failures = decode_pair(pair, 1 << 20)
    assert failures == [("production", "truncated"), ("shadow", "unsupported")]
    assert decoded.production.body == broken
    assert decoded.production.decode_error == "ends before its gzip data does (truncated)"
    assert decoded.result.decode_error == (
        "has Content-Encoding 'lz4', which shadowproxy cannot decode"
    )


def test_a_capture_cut_at_the_cap_keeps_its_decoded_start() -> None:
    long = orjson.dumps({"predictions": list(range(20_000))})
    cut = gzip.compress(long)[:2000]
    decoded, failures = decode_pair(make_pair(prod=(cut, "gzip"), prod_truncated=True), 1 << 20)
    assert failures == []
    assert long.startswith(decoded.production.body) and len(decoded.production.body) > 2000
    assert decoded.production.body_truncated


def test_the_pairs_of_one_request_share_one_decoding() -> None:
    first = make_pair(prod=(gzip.compress(PROD), "gzip"))
    second = replace(first, shadow="forest")  # same RequestInfo and ProductionResult
    memo: Memo = {}
    one, _ = decode_pair(first, 1 << 20, memo)
    two, _ = decode_pair(second, 1 << 20, memo)
    assert one.production is two.production and one.production.body == PROD


# --- through the recorder: rows, comparison, metrics ------------------------------------


async def record(
    tmp_path: Path, pairs: list[Pair], route: RouteConfig
) -> tuple[list[dict[str, Any]], CollectorRegistry]:
    registry = CollectorRegistry()
    recorder = Recorder(settings(tmp_path), [route], Metrics(registry), Comparer([route]))
    await recorder.start()
    for pair in pairs:
        recorder.submit(pair)
    await recorder.close()
    rows = sorted(read_dataset(str(tmp_path)).to_pylist(), key=lambda row: row["request_id"])
    return rows, registry


async def test_compressed_bodies_are_recorded_decoded_redacted_and_compared(
    tmp_path: Path,
) -> None:
    pair = make_pair(
        request=(gzip.compress(REQUEST), "gzip"),
        prod=(zlib.compress(PROD), "deflate"),
        shadow=(brotli.compress(gzip.compress(SHADOW)), "gzip, br"),
    )
    route = make_route(record={"redact": ["$.customer.ssn"]})
    [row], registry = await record(tmp_path, [pair], route)

    assert orjson.loads(row["request_body"])["customer"] == {"ssn": "[redacted]"}
    assert orjson.loads(row["prod_body"]) == orjson.loads(PROD)
    assert orjson.loads(row["shadow_body"]) == orjson.loads(SHADOW)
    assert not row["request_body_withheld"] and not row["prod_body_withheld"]
    assert (row["agree"], row["prod_prediction"], row["compare_detail"]) == (True, "[0]", None)
    encodings = [row[f"{body}_content_encoding"] for body in ("request", "prod", "shadow")]
    assert encodings == ["gzip", "deflate", "gzip, br"]
    errors = [row[f"{body}_body_decode_error"] for body in ("request", "prod", "shadow")]
    assert errors == [None, None, None]
    assert (
        registry.get_sample_value(
            "shadowproxy_comparisons_total", {"route": "iris", "shadow": "tree", "result": "agree"}
        )
        == 1
    )


async def test_bodies_that_cannot_be_decoded_are_incomparable_recorded_and_counted(
    tmp_path: Path,
) -> None:
    bomb = gzip_bomb()  # about 1 MiB of gzip, 1 GiB of zeros
    pairs = [
        make_pair(0, shadow=(bomb, "gzip")),
        make_pair(1, prod=(gzip.compress(PROD)[:-12], "gzip")),
        make_pair(2, shadow=(brotli.compress(SHADOW), "zstd")),
        make_pair(3, request=(b"\x1f\x8b\x08 not really", "gzip")),
    ]
    rows, registry = await record(tmp_path, pairs, make_route(max_decoded_bytes=1 << 20))
    bombed, cut, mislabelled, bad_request = rows

    assert bombed["agree"] is None
    assert bombed["compare_detail"] == (
        "shadow body decodes (gzip) to more than 1048576 bytes (max_decoded_bytes)"
    )
    assert bombed["shadow_body_decode_error"].startswith("decodes (gzip) to more than")
    assert bombed["shadow_body"] == bomb[:65536]  # as sent, capped like any body
    assert bombed["shadow_body_truncated"] is True
    assert cut["compare_detail"] == "production body ends before its gzip data does (truncated)"
    assert mislabelled["compare_detail"].startswith("shadow body is not valid zstd data (")
    # The request body is not compared: its failure is in its own column only.
    assert bad_request["agree"] is True
    assert bad_request["request_body_decode_error"].startswith("is not valid gzip data (")
    assert bad_request["request_body"] == b"\x1f\x8b\x08 not really"

    def failures(body: str, reason: str) -> float | None:
        labels = {"route": "iris", "body": body, "reason": reason}
        return registry.get_sample_value("shadowproxy_body_decode_failures_total", labels)

    assert failures("shadow", "too_large") == 1
    assert failures("production", "truncated") == 1
    assert failures("shadow", "corrupt") == 1
    assert failures("request", "corrupt") == 1
    incomparable = {"route": "iris", "shadow": "tree", "result": "incomparable"}
    assert registry.get_sample_value("shadowproxy_comparisons_total", incomparable) == 3


async def test_without_bodies_or_comparison_nothing_is_decoded_but_the_encoding_is_kept(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    route = make_route(record={"bodies": False})
    recorder = Recorder(settings(tmp_path), [route], Metrics(registry))
    await recorder.start()
    recorder.submit(make_pair(prod=(b"not gzip", "gzip")))
    await recorder.close()
    [row] = read_dataset(str(tmp_path)).to_pylist()
    assert (row["prod_content_encoding"], row["prod_body_decode_error"]) == ("gzip", None)


def test_the_decoding_step_is_pure() -> None:
    """It runs in the writer; nothing of the I/O stack or Arrow comes with it."""
    code = (
        "import sys, shadowproxy.recording.decoding; "
        "loaded = {'aiohttp', 'pyarrow', 'brotli', 'backports.zstd'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
