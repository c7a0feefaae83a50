"""The pure gRPC rules: Open Inference message decoding (every datatype, raw and typed),
metadata, status codes, method routing, health messages and the config checks."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tritonclient.grpc import service_pb2

from shadowproxy.compare import Comparer
from shadowproxy.compare.inference_grpc import decode_response, message_class
from shadowproxy.compare.verdict import Incomparable
from shadowproxy.config import RouteConfig, load_config
from shadowproxy.errors import ConfigError
from shadowproxy.grpc import codes, metadata
from shadowproxy.grpc.server import health_response, health_service
from shadowproxy.proxy.routing import GrpcRouteTable
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult

INFER = "/inference.GRPCInferenceService/ModelInfer"

# (datatype, numpy dtype, values); BYTES apart.
NUMERIC = [
    ("BOOL", np.bool_, [True, False, True]),
    ("INT8", np.int8, [-128, 0, 127]),
    ("INT16", np.int16, [-32768, 1, 32767]),
    ("INT32", np.int32, [-(2**31), 2, 2**31 - 1]),
    ("INT64", np.int64, [-(2**63), 3, 2**63 - 1]),
    ("UINT8", np.uint8, [0, 1, 255]),
    ("UINT16", np.uint16, [0, 2, 65535]),
    ("UINT32", np.uint32, [0, 3, 2**32 - 1]),
    ("UINT64", np.uint64, [0, 4, 2**64 - 1]),
    ("FP16", np.float16, [0.5, -2.0, 65504.0]),
    ("FP32", np.float32, [0.25, -1.5, 3.0e38]),
    ("FP64", np.float64, [0.1, -1e300, 2.5]),
]  # fmt: skip
TYPED_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip


def response(
    outputs: list[tuple[str, str, list[int], Any]], raw: list[bytes] | None = None
) -> bytes:
    """A ModelInferResponse built with tritonclient's generated classes (an independent
    definition of the same messages)."""
    message = service_pb2.ModelInferResponse(model_name="m", id="r1")
    for name, datatype, shape, values in outputs:
        tensor = message.outputs.add(name=name, datatype=datatype, shape=shape)
        if values is not None:
            getattr(tensor.contents, TYPED_FIELD.get(datatype, "bytes_contents")).extend(values)
    message.raw_output_contents.extend(raw or [])
    return message.SerializeToString()


@pytest.mark.parametrize(("datatype", "dtype", "values"), NUMERIC)
def test_raw_contents_decode_every_numeric_datatype(datatype: str, dtype: Any, values: Any) -> None:
    array = np.array(values, dtype=dtype)
    body = response([("y", datatype, [3], None)], [array.tobytes()])
    answer = decode_response("production", INFER, body)
    assert answer["outputs"] == [
        {"name": "y", "datatype": datatype, "shape": [3], "data": array.tolist()}
    ]
    assert (answer["model_name"], answer["id"]) == ("m", "r1")


@pytest.mark.parametrize(
    ("datatype", "dtype", "values"), [row for row in NUMERIC if row[0] != "FP16"]
)
def test_typed_contents_decode_like_raw_ones(datatype: str, dtype: Any, values: Any) -> None:
    typed = decode_response("p", INFER, response([("y", datatype, [3], values)]))
    raw_body = response([("y", datatype, [3], None)], [np.array(values, dtype=dtype).tobytes()])
    raw = decode_response("p", INFER, raw_body)
    if datatype == "FP32":  # typed FP32 values are floats widened the same way
        assert typed["outputs"][0]["data"] == pytest.approx(raw["outputs"][0]["data"])
    else:
        assert typed == raw


def test_bytes_bf16_and_shapes() -> None:
    items = [b"cat", b"", "\u00e9t\u00e9".encode(), b"\xff"]
    raw_bytes = b"".join(struct.pack("<I", len(item)) + item for item in items)
    bf16 = np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16
    body = response(
        [("label", "BYTES", [2, 2], None), ("half", "BF16", [2, 1], None)],
        [raw_bytes, bf16.astype("<u2").tobytes()],
    )
    answer = decode_response("p", INFER, body)
    assert answer["outputs"][0]["data"] == ["cat", "", "\u00e9t\u00e9", "\\xff"]
    assert answer["outputs"][1]["data"] == [1.5, -2.0]
    typed = decode_response("p", INFER, response([("label", "BYTES", [1], [b"dog"])]))
    assert typed["outputs"][0]["data"] == ["dog"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xff\xff", "shadow message is not a ModelInferResponse"),
        (response([("y", "FP32", [3], None)], [b"\x00" * 8]), "shadow output 'y' has 2 values but shape [3]"),
        (response([("y", "FP32", [1], None)], [b"\x00" * 5]), "shadow output 'y': 5 raw bytes is not a whole number of 4"),
        (response([("y", "BYTES", [1], None)], [b"\x09\x00\x00\x00ab"]), "shadow output 'y': BYTES item of 9 bytes runs past the end"),
        (response([("y", "FP16", [1], [])]), "shadow output 'y': datatype 'FP16' has no typed contents (raw only)"),
        (response([("y", "COMPLEX", [1], None)], [b"\x00"]), "shadow output 'y': unknown datatype 'COMPLEX'"),
        (response([("a", "FP32", [1], None), ("b", "FP32", [1], None)], [b"\x00" * 4]), "shadow has 1 raw_output_contents for 2 outputs"),
    ],
)  # fmt: skip
def test_broken_messages_are_reasons(body: bytes, reason: str) -> None:
    with pytest.raises(Incomparable) as caught:
        decode_response("shadow", INFER, body)
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_our_messages_read_what_tritonclient_writes() -> None:
    request = service_pb2.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.parameters["binary_data_size"].int64_param = 16
    request.raw_input_contents.append(np.zeros(4, dtype=np.float32).tobytes())
    ours = message_class("ModelInferRequest")()
    ours.ParseFromString(request.SerializeToString())
    assert ours.SerializeToString() == request.SerializeToString()
    live = service_pb2.ServerLiveResponse(live=True).SerializeToString()
    assert decode_response("p", "/inference.GRPCInferenceService/ServerLive", live) == {
        "live": True
    }


def _pair(path: str, prod: bytes, shadow: bytes, grpc_status: str = "OK") -> Pair:
    request = RequestInfo(
        request_id="r",
        ts=0.0,
        route="m",
        method="POST",
        path=path,
        query="",
        headers=[],
        body=b"",
        body_complete=True,
        protocol="grpc",
    )
    production = ProductionResult(
        status=200,
        latency_ms=1.0,
        error=None,
        body=prod,
        body_truncated=False,
        content_type="application/grpc",
        chaos=None,
        grpc_status="OK",
    )
    status = codes.http_equivalent(grpc_status)
    result = ShadowResult(
        outcome="ok",
        status=status,
        latency_ms=1.0,
        error=None,
        body=shadow,
        body_truncated=False,
        content_type=None,
        chaos=None,
        grpc_status=grpc_status,
    )
    return Pair(request=request, shadow="s", role="candidate", production=production, result=result)


def test_comparison_of_grpc_pairs_uses_the_open_inference_form() -> None:
    route = RouteConfig.model_validate(
        {"name": "m", "match": {"grpc": "inference.GRPCInferenceService"},
         "production": {"url": "grpc://p:1"}, "compare": {"prediction": "open-inference"}}
    )  # fmt: skip
    comparer = Comparer([route])
    one = response([("y", "FP32", [2, 2], None)], [np.array([1, 0, 0, 1], "<f4").tobytes()])
    two = response([("y", "FP32", [2, 2], None)], [np.array([1, 0, 1, 0], "<f4").tobytes()])
    verdict = comparer(_pair(INFER, one, two))
    assert (verdict.prod_prediction, verdict.batch_size, verdict.batch_agree) == (
        "[[1.0,0.0],[0.0,1.0]]", 2, 1,
    )  # fmt: skip
    assert (
        comparer(_pair(INFER, one, b"", "UNAVAILABLE")).detail == "shadow gRPC status UNAVAILABLE"
    )
    other = comparer(_pair("/demo.Echo/Say", b"\x01", b"\x02"))
    assert (other.comparator, other.agree, other.prod_prediction) == ("exact", False, '"AQ=="')


def test_metadata_rules() -> None:
    incoming = [(":authority", "x"), ("grpc-timeout", "1S"), ("user-agent", "ua"),
                ("te", "trailers"), ("x-request-id", "abc"), ("key-bin", b"\x00"),
                ("authorization", "t")]  # fmt: skip
    assert metadata.request_id_of(incoming) == "abc"
    assert len(metadata.request_id_of([("x-request-id", "\n")])) == 32
    upstream = metadata.upstream_metadata(incoming, "abc")
    assert upstream == [("key-bin", b"\x00"), ("authorization", "t"), ("x-request-id", "abc")]
    copy = metadata.shadow_metadata(upstream, frozenset({"authorization"}), {"X-Team": "ml"})
    assert copy == [("key-bin", b"\x00"), ("x-request-id", "abc"), ("x-team", "ml"),
                    ("x-shadow-request", "true")]  # fmt: skip
    forged = metadata.shadow_metadata([("x-shadow-request", "false")], frozenset(), {})
    assert forged == [("x-shadow-request", "true")]
    assert metadata.client_metadata([("x-request-id", "other"), ("x-a", "1")], "abc") == (
        ("x-a", "1"), ("x-request-id", "abc"),
    )  # fmt: skip
    assert metadata.trailing_metadata([("grpc-status", "0"), ("x-cost", "2")]) == (("x-cost", "2"),)


def test_codes() -> None:
    assert codes.NAMES[14] == "UNAVAILABLE" and len(codes.NAMES) == 17
    assert set(codes.HTTP_EQUIVALENT) == set(codes.NAMES)
    assert [codes.http_equivalent(n) for n in ("OK", "CANCELLED", "DEADLINE_EXCEEDED")] == [
        200, 499, 504,
    ]  # fmt: skip
    assert [codes.from_http(s) for s in (503, 404, 418)] == [
        "UNAVAILABLE",
        "UNIMPLEMENTED",
        "UNKNOWN",
    ]


def test_method_routes_beat_service_routes() -> None:
    def route(name: str, match: str) -> RouteConfig:
        return RouteConfig.model_validate(
            {"name": name, "match": {"grpc": match}, "production": {"url": "grpc://p:1"}}
        )

    table = GrpcRouteTable([route("svc", "a.S"), route("one", "a.S/M"), route("web", "b.T")])
    assert [getattr(table.match(p), "name", None) for p in ("/a.S/M", "/a.S/N", "/b.T/M", "/a.SS/M", "/c.U/M")] == [
        "one", "svc", "web", None, None,
    ]  # fmt: skip


def test_health_messages() -> None:
    assert health_response(2) == b"\x08\x02"
    assert health_service(b"") == ""
    assert health_service(b"\x0a\x03a.B") == "a.B"
    assert health_service(b"\x0a\x05a.B") is None
    assert health_service(b"\x12\x00") is None


def _load(tmp_path: Path, route: dict[str, Any], **main: Any) -> None:
    (tmp_path / "routes").mkdir(exist_ok=True)
    (tmp_path / "routes" / "r.yaml").write_text(yaml.safe_dump(route))
    body = {"routes_dir": "routes", **main}
    (tmp_path / "main.yaml").write_text(yaml.safe_dump(body))
    load_config(tmp_path / "main.yaml")


GRPC_ROUTE = {"name": "r", "match": {"grpc": "inference.GRPCInferenceService"},
              "production": {"url": "grpc://127.0.0.1:8001"}}  # fmt: skip


@pytest.mark.parametrize(
    ("route", "main", "message"),
    [
        (GRPC_ROUTE, {}, "routes/r.yaml: match.grpc: a gRPC route needs grpc_listen (host:port) in the main config"),
        ({**GRPC_ROUTE, "match": {"grpc": "inference/"}}, {"grpc_listen": "127.0.0.1:0"},
         "routes/r.yaml: match.grpc: must be package.Service or package.Service/Method"),
        ({**GRPC_ROUTE, "match": {"grpc": "a.B", "path_prefix": "/x"}}, {"grpc_listen": "127.0.0.1:0"},
         "routes/r.yaml: match: needs exactly one of path_prefix (HTTP) or grpc (gRPC)"),
        ({**GRPC_ROUTE, "match": {"grpc": "a.B", "methods": ["POST"]}}, {"grpc_listen": "127.0.0.1:0"},
         "routes/r.yaml: match.methods: applies to HTTP routes only"),
        ({**GRPC_ROUTE, "production": {"url": "http://127.0.0.1:1"}}, {"grpc_listen": "127.0.0.1:0"},
         "routes/r.yaml: production.url: a gRPC route needs a grpc:// or grpcs:// URL"),
        ({**GRPC_ROUTE, "shadows": [{"name": "s", "url": "https://x"}]}, {"grpc_listen": "127.0.0.1:0"},
         "routes/r.yaml: shadows[0].url: a gRPC route needs a grpc:// or grpcs:// URL"),
        ({"name": "r", "match": {"path_prefix": "/"}, "production": {"url": "grpc://x:1"}}, {},
         "routes/r.yaml: production.url: a grpc:// upstream needs match.grpc"),
        ({**GRPC_ROUTE, "grpc_max_message_bytes": 0}, {"grpc_listen": "127.0.0.1:0"},
         "routes/r.yaml: grpc_max_message_bytes: must be at least 1"),
        (GRPC_ROUTE, {"grpc_listen": "8081"}, "main.yaml: grpc_listen: must be host:port"),
        ({**GRPC_ROUTE, "monitor": {"sample_rate": 0.5}}, {"grpc_listen": "127.0.0.1:0"},
         "routes/r.yaml: monitor: watches HTTP routes only"),
    ],
)  # fmt: skip
def test_config_errors_name_file_and_field(
    tmp_path: Path, route: dict[str, Any], main: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, route, **main)
    assert str(caught.value).replace(str(tmp_path) + "/", "").startswith(message), str(caught.value)


def test_the_decoder_imports_neither_grpc_nor_aiohttp() -> None:
    code = (
        "import sys, shadowproxy.compare.inference_grpc, shadowproxy.grpc.metadata, "
        "shadowproxy.grpc.codes; "
        "loaded = {'grpc', 'aiohttp', 'asyncio'} & set(sys.modules); assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_http_routes_never_load_protobuf() -> None:
    """Without gRPC routes the serving process and the comparison need no gRPC extra."""
    code = (
        "import sys, shadowproxy.app, shadowproxy.compare, shadowproxy.recording; "
        "loaded = {'grpc', 'google.protobuf'} & set(sys.modules); assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_grpc_pairs_cross_the_writer_pipe_whole() -> None:
    from shadowproxy.recording.wire import pack, unpack

    pair = _pair(INFER, b"prod", b"shadow", "NOT_FOUND")
    back = unpack(pack(pair))
    assert back.request.protocol == "grpc"
    assert (back.production.grpc_status, back.result.grpc_status) == ("OK", "NOT_FOUND")
    assert (back.request.path, back.production.body, back.result.body) == (
        INFER, b"prod", b"shadow",
    )  # fmt: skip


def test_grpc_rows_carry_protocol_and_status_names() -> None:
    from shadowproxy.recording.schema import PAIRS_SCHEMA, pair_row, to_record_batch

    row = pair_row(_pair(INFER, b"p", b"s", "UNAVAILABLE"), None, bodies=True, max_body_bytes=10)
    assert (row["protocol"], row["prod_grpc_status"], row["shadow_grpc_status"]) == (
        "grpc", "OK", "UNAVAILABLE",
    )  # fmt: skip
    assert (row["method"], row["path"], row["shadow_status"]) == ("POST", INFER, 503)
    assert to_record_batch([row]).schema == PAIRS_SCHEMA
    # Added after the columns readers already had, side by side.
    names = PAIRS_SCHEMA.names
    start = names.index("protocol")
    assert names[start : start + 3] == ["protocol", "prod_grpc_status", "shadow_grpc_status"]
    assert start > names.index("shadow_latency_ms")


def test_an_observation_crosses_the_pipe_whole() -> None:
    """The writer process gets a watched request as it left the proxy, field for field."""
    from shadowproxy.recording.wire import pack_observation, unpack_observation
    from shadowproxy.records import Observation

    request = RequestInfo(
        request_id="r", ts=1.0, route="m", method="POST", path=INFER, query="", headers=[],
        body=b"in", body_complete=True, content_encoding="gzip", protocol="grpc",
    )  # fmt: skip
    production = ProductionResult(
        status=200, latency_ms=2.0, error=None, body=b"out", body_truncated=False,
        content_type="application/grpc", chaos=None, content_encoding="br",
        grpc_status="OK", model_version="v2",
    )  # fmt: skip
    observation = Observation(request, production)
    assert unpack_observation(pack_observation(observation)) == observation
