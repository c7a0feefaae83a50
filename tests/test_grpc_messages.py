"""gRPC routes of a service shadowproxy has no table for, typed by a descriptor set
(``grpc_descriptor_set``): the set checked at load, each answer decoded to JSON in the
writer and compared under the route's ``compare:`` like an HTTP body, then reported.
Real protoc (grpcio-tools), real grpc.aio servers, the real proxy, writer process,
Parquet and report."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import grpc_messages
from shadowproxy.compare.verdict import Incomparable
from shadowproxy.config import load_config
from shadowproxy.errors import ConfigError
from shadowproxy.metrics import Metrics
from shadowproxy.recording import read_dataset
from shadowproxy.recording.process import RecorderProcess
from shadowproxy.report import build_report
from shadowproxy.report.options import ReportOptions
from tests.grpc_support import fake_upstream
from tests.support import write_config

SCORE = "/fraud.v1.Scorer/Score"

PROTO = """
syntax = "proto3";
package fraud.v1;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/any.proto";

service Scorer {
  rpc Score (ScoreRequest) returns (ScoreReply);
}
message ScoreRequest { string account = 1; double amount = 2; }
enum Verdict { VERDICT_UNSPECIFIED = 0; OK = 1; FRAUD = 2; }
message ScoreReply {
  double score = 1;
  string label = 2;
  int64 model_version = 3;
  google.protobuf.Timestamp scored_at = 4;
  repeated uint64 ids = 5;
  map<string, int64> counts = 6;
  Verdict verdict = 7;
  google.protobuf.Int64Value big = 8;
  Inner inner = 9;
  message Inner { int64 n = 1; }
  google.protobuf.Any extra = 10;
}
"""


@pytest.fixture(scope="module")
def protos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``scorer.pb`` as the docs say to make it, and ``bare.pb`` without its imports."""
    directory = tmp_path_factory.mktemp("protos")
    (directory / "scorer.proto").write_text(PROTO)
    well_known = resources.files("grpc_tools") / "_proto"
    for name, extra in (("scorer.pb", ["--include_imports"]), ("bare.pb", [])):
        code = protoc.main(
            [
                "protoc",
                f"-I{directory}",
                f"-I{well_known}",
                *extra,
                f"--descriptor_set_out={directory / name}",
                str(directory / "scorer.proto"),
            ]
        )
        assert code == 0
    return directory


def messages(protos: Path) -> tuple[Any, Any]:
    """The servers' own message classes, built without shadowproxy's code."""
    files = descriptor_pb2.FileDescriptorSet.FromString((protos / "scorer.pb").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # protoc writes each file after the files it imports
        pool.Add(file)

    def get(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    return get("fraud.v1.ScoreRequest"), get("fraud.v1.ScoreReply")


def scorer_route(descriptor_set: str, match: str = "fraud.v1.Scorer", **extra: Any) -> Any:
    return {
        "name": "scorer",
        "match": {"grpc": match},
        "production": {"url": "grpc://127.0.0.1:7001"},
        "grpc_descriptor_set": descriptor_set,
        **extra,
    }


# --- checked at load --------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "match", "expected"),
    [
        ("missing.pb", "fraud.v1.Scorer", "cannot be read: No such file or directory"),
        ("garbage.pb", "fraud.v1.Scorer", "is not a protobuf descriptor set"),
        ("empty.pb", "fraud.v1.Scorer", "holds no .proto files"),
        (
            "bare.pb",
            "fraud.v1.Scorer",
            (
                "scorer.proto imports google/protobuf/timestamp.proto, which the set does "
                "not hold: make it with protoc --include_imports"
            ),
        ),
        (
            "scorer.pb",
            "fraud.v1.Scorr",
            (
                "defines no service 'fraud.v1.Scorr' (did you mean 'fraud.v1.Scorer'?) "
                "(services: fraud.v1.Scorer)"
            ),
        ),
        (
            "scorer.pb",
            "fraud.v1.Scorer/Scor",
            "service fraud.v1.Scorer has no method 'Scor' (did you mean 'Score'?) (methods: Score)",
        ),
    ],
)
def test_a_bad_descriptor_set_is_a_config_error_naming_file_and_field(
    tmp_path: Path, protos: Path, file: str, match: str, expected: str
) -> None:
    (protos / "garbage.pb").write_bytes(b"\xff\xff\xff\xff")
    (protos / "empty.pb").write_bytes(b"")
    config = write_config(
        tmp_path, [scorer_route(str(protos / file), match)], grpc_listen="127.0.0.1:0"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    route_file = str(tmp_path / "routes" / "scorer.yaml")
    assert str(caught.value).startswith(
        f"{route_file}: grpc_descriptor_set: {str(protos / file)!r} "
    )
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            {
                "name": "web",
                "match": {"path_prefix": "/v1"},
                "production": {"url": "http://127.0.0.1:7001"},
                "grpc_descriptor_set": "x.pb",
            },
            "grpc_descriptor_set: applies to gRPC routes only",
        ),
        (
            scorer_route("x.pb", "inference.GRPCInferenceService"),
            "grpc_descriptor_set: inference.GRPCInferenceService is decoded built in",
        ),
    ],
)
def test_a_descriptor_set_only_types_services_without_a_table(
    tmp_path: Path, route: Any, expected: str
) -> None:
    config = write_config(tmp_path, [route], grpc_listen="127.0.0.1:0")
    with pytest.raises(ConfigError, match=expected):
        load_config(config)


def test_an_inline_route_reads_its_set_beside_the_main_file(tmp_path: Path, protos: Path) -> None:
    shutil.copy(protos / "scorer.pb", tmp_path / "scorer.pb")
    main = tmp_path / "shadowproxy.yaml"
    inline = {"grpc_listen": "127.0.0.1:0", "routes": [scorer_route("scorer.pb")]}
    main.write_text(yaml.safe_dump(inline))
    (route,) = load_config(main).routes
    assert route.grpc_messages == ((protos / "scorer.pb").read_bytes(), "fraud.v1.Scorer")
    inline["routes"][0]["grpc_descriptor_set"] = "nowhere.pb"
    main.write_text(yaml.safe_dump(inline))
    with pytest.raises(ConfigError, match=r"routes\[0\]\.grpc_descriptor_set: '.*nowhere.pb'"):
        load_config(main)


def test_answers_decode_to_proto3_json_with_numbers_kept_numbers(protos: Path) -> None:
    _, reply = messages(protos)
    types = grpc_messages.load((protos / "scorer.pb").read_bytes(), "fraud.v1.Scorer/Score")
    answer = reply(label="fraud", model_version=2**40, ids=[1, 2**64 - 1], verdict=2)
    answer.score = float("-inf")
    answer.counts["a"] = -5
    answer.big.value = 2**53 + 1
    answer.inner.n = 3
    answer.scored_at.seconds = 5
    decoded = types.response("production", SCORE, answer.SerializeToString())
    assert decoded == {
        "score": float("-inf"),
        "label": "fraud",
        "model_version": 2**40,
        "scored_at": "1970-01-01T00:00:05Z",
        "ids": [1, 2**64 - 1],
        "counts": {"a": -5},
        "verdict": "FRAUD",
        "big": 2**53 + 1,
        "inner": {"n": 3},
    }
    assert types.response("production", SCORE, b"") == {
        "score": 0.0,  # every field at its default: none on the wire, all present
        "label": "",
        "model_version": 0,
        "ids": [],
        "counts": {},
        "verdict": "VERDICT_UNSPECIFIED",
    }
    assert types.knows(SCORE) and not types.knows("/fraud.v1.Scorer/Other")
    with pytest.raises(Incomparable, match=r"shadow message is not a fraud\.v1\.ScoreReply"):
        types.response("shadow", SCORE, b"\x0a\x05ab")
    unknown = reply()
    unknown.extra.type_url = "type.googleapis.com/other.Type"  # not in the set
    with pytest.raises(Incomparable, match=r"production fraud\.v1\.ScoreReply has no JSON"):
        types.response("production", SCORE, unknown.SerializeToString())


# --- through the proxy ------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_typed_answers_are_compared_recorded_and_reported(
    tmp_path: Path, protos: Path
) -> None:
    request_type, reply = messages(protos)
    calls = 20
    bigger = {5, 10, 15}  # the shadow scores these 0.2 higher: past abs_tol, disagree
    malformed = 7  # the shadow answers bytes that are no ScoreReply: incomparable

    def answering(shift: Callable[[int], float], role: str) -> Any:
        async def behaviour(request: bytes, context: Any) -> bytes:
            n = int(request_type.FromString(request).account)
            if role == "shadow" and n == malformed:
                return b"\x0a\x05ab"
            score = n / 20 + shift(n)  # n == 0: a score of 0.0, which is not on the wire
            label = "fraud" if score > 0.5 else "ok"
            answer = reply(score=score, label=label, model_version=1 if role == "prod" else 2)
            answer.scored_at.GetCurrentTime()
            return bytes(answer.SerializeToString())

        return behaviour

    prod_answer = answering(lambda n: 0.0, "prod")
    shadow_answer = answering(lambda n: 0.2 if n in bigger else 0.001 * (n % 2), "shadow")
    async with fake_upstream(prod_answer) as prod, fake_upstream(shadow_answer) as shadow:
        (tmp_path / "routes").mkdir()
        shutil.copy(protos / "scorer.pb", tmp_path / "routes" / "scorer.pb")
        route = {
            **scorer_route("scorer.pb"),  # relative to the route file
            "production": {"url": prod.url},
            "shadows": [{"name": "v2", "url": shadow.url}],
            "compare": {"prediction": "$.score", "kind": "numeric", "abs_tol": 0.01},
        }
        config = load_config(write_config(tmp_path, [route], grpc_listen="127.0.0.1:0"))
        registry = CollectorRegistry()
        metrics = Metrics(registry, recorder_registry=CollectorRegistry())
        recorder = RecorderProcess(config, metrics)  # routes reach it pickled, set included
        server = Server(config, metrics, recorder, recorder, recorder.auto_choices)
        await server.start()
        try:
            host, port = server.grpc_address  # type: ignore[misc]
            async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
                score = channel.unary_unary(SCORE)
                for n in range(calls):
                    request = request_type(account=str(n), amount=n).SerializeToString()
                    answer = reply.FromString(
                        await score(request, metadata=(("x-request-id", f"req-{n:02d}"),))
                    )
                    assert answer.model_version == 1  # production's answer, always
        finally:
            await server.stop()

    rows = {
        row["request_id"]: row for row in read_dataset(str(tmp_path / "shadow-logs")).to_pylist()
    }
    assert len(rows) == calls
    for n in range(calls):
        row = rows[f"req-{n:02d}"]
        assert (row["protocol"], row["path"], row["comparator"]) == ("grpc", SCORE, "numeric")
        assert reply.FromString(row["prod_body"]).model_version == 1  # bodies: the messages
        assert json.loads(row["prod_prediction"]) == pytest.approx(n / 20)
        if n == malformed:
            assert row["agree"] is None and row["shadow_prediction"] is None
            assert row["compare_detail"].startswith("shadow message is not a fraud.v1.ScoreReply")
            continue
        assert json.loads(row["shadow_prediction"]) == pytest.approx(
            n / 20 + (0.2 if n in bigger else 0.001 * (n % 2))
        )
        assert row["agree"] is (n not in bigger), (n, row["compare_detail"])
    agree = calls - len(bigger) - 1
    labels = {"route": "scorer", "shadow": "v2"}
    sample = registry.get_sample_value
    assert sample("shadowproxy_comparisons_total", {**labels, "result": "agree"}) == agree
    assert sample("shadowproxy_comparisons_total", {**labels, "result": "disagree"}) == 3
    assert sample("shadowproxy_comparisons_total", {**labels, "result": "incomparable"}) == 1

    report = build_report(
        ReportOptions(root=str(tmp_path / "shadow-logs")), now=datetime.now(UTC), progress=False
    )
    (pair,) = report.pairs
    assert pair.agreement_rate == pytest.approx(agree / (calls - 1))
