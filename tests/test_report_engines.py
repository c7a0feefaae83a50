"""The engine layer without a JVM: the dialects' fragments, the portable sample hash on
DuckDB, how Spark is pointed at the files, and the command line's engine flags. The
same fragments run on Spark in ``test_report_spark``."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from shadowproxy import cli
from shadowproxy.compare import jsonpath
from shadowproxy.report import ReportInputError, ReportOptions, analysis, load, queries
from shadowproxy.report.dialect import DUCKDB, SPARK, spark_path
from shadowproxy.report.engines import open_engine
from shadowproxy.report.engines.spark import local_mode_conf, read_labels_file, spark_uri

IDS = ["", "a", "req-000001", "0d3f6c1e-9b7a-4c55-8f0e-1a2b3c4d5e6f", "été ☃", "x" * 300]


def portable_hash(text: str) -> int:
    return int(hashlib.md5(text.encode()).hexdigest()[:15], 16)


def test_the_sample_hash_is_the_first_60_bits_of_md5_on_duckdb() -> None:
    connection = duckdb.connect()
    for request_id in IDS:
        (got,) = connection.execute(
            f"SELECT {DUCKDB.hash_bucket('?')}", [request_id]
        ).fetchone() or (None,)
        assert got == portable_hash(request_id), request_id


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.instances[0].country", '$["instances"][0]["country"]'),
        ("$['a b'].c", '$["a b"]["c"]'),
        ('$["x"][12]', '$["x"][12]'),
    ],
)
def test_segment_paths_in_spark_syntax(path: str, expected: str) -> None:
    assert spark_path(jsonpath.parse(path)) == expected


@pytest.mark.parametrize("path", ["$.a[-1]", '$["it\'s"]', "$.a[*][-2]"])
def test_segment_paths_spark_cannot_read_are_refused_with_the_way_out(path: str) -> None:
    with pytest.raises(ReportInputError, match="--engine duckdb"):
        SPARK.segment(jsonpath.parse(path))
    DUCKDB.segment(jsonpath.parse(path))  # DuckDB reads every path


def test_spark_is_handed_uris_it_can_resolve(tmp_path: Path) -> None:
    local = load.Dataset(str(tmp_path), pafs.LocalFileSystem(), True, str(tmp_path), (), ())
    assert spark_uri(local, f"{tmp_path}/pairs/a.parquet") == f"file://{tmp_path}/pairs/a.parquet"
    s3 = pafs.S3FileSystem(endpoint_override="http://127.0.0.1:1", region="us-east-1")
    remote = load.Dataset("s3://bucket/rec", s3, False, "bucket/rec", (), ())
    assert spark_uri(remote, "bucket/rec/pairs/a.parquet") == "s3a://bucket/rec/pairs/a.parquet"


def test_s3a_roots_are_discovered_as_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing is contacted
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    filesystem, base = load._filesystem("s3a://bucket/prefix")
    assert filesystem.type_name == "s3"
    assert base == "bucket/prefix"


def test_labels_file_for_spark_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label,note\n007,1.0,x\n008,,y\n")
    table = read_labels_file(str(path))
    assert table.column_names == ["request_id", "label"]
    assert table.to_pylist() == [
        {"request_id": "007", "label": "1.0"},
        {"request_id": "008", "label": None},
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,value\n1,2\n")
    with pytest.raises(ReportInputError, match="needs a request_id column"):
        read_labels_file(str(bad))
    with pytest.raises(ReportInputError, match="cannot read labels file"):
        read_labels_file(str(tmp_path / "missing.csv"))


def test_an_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportInputError, match="choose one of duckdb, spark"):
        with open_engine(ReportOptions(root=str(tmp_path), engine="trino")):
            pass


def test_the_command_line_takes_the_engine_and_the_master() -> None:
    parser = cli._parser()
    args = parser.parse_args(
        ["report", "rec", "--engine", "spark", "--spark-master", "sc://spark:15002"]
    )
    assert (args.engine, args.spark_master) == ("spark", "sc://spark:15002")
    assert parser.parse_args(["report", "rec"]).engine == "duckdb"  # the embedded default
    with pytest.raises(SystemExit):
        parser.parse_args(["report", "rec", "--engine", "trino"])


@pytest.mark.parametrize(
    ("master", "partitions"),
    [("local", "8"), ("local[*]", "8"), ("local[2]", "2"), ("local[3,2]", "3")],
)
def test_a_local_driver_shuffles_into_one_partition_per_core(master: str, partitions: str) -> None:
    conf = local_mode_conf(master, cpus=8)
    assert conf["spark.sql.shuffle.partitions"] == partitions
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"


def test_a_body_without_json_is_missing_under_a_wildcard_path() -> None:
    """A wildcard path folds the values it finds; a body that is not JSON has none."""
    connection = duckdb.connect()
    bodies = [b'{"a": [1, 1]}', b'{"a": [1, 2]}', b"not json", b"\xff", None]
    scope = pa.table(
        {
            "route": ["r"] * len(bodies),
            "shadow": ["s"] * len(bodies),
            "agree": [True] * len(bodies),
            "request_body": pa.array(bodies, pa.binary()),
        }
    )
    connection.register("scope", scope)
    query = queries.segments(jsonpath.parse("$.a[*]"), 10, DUCKDB)
    rows = connection.execute(query.sql, query.params).fetchall()
    assert {row[2]: row[3] for row in rows} == {"1": 1, "(mixed)": 1, "(missing)": 3}


@pytest.mark.parametrize(
    ("diff_range", "width"),
    [
        ((0.0, 1.9, 5.0), 1.9 / (analysis.DIFF_BINS - 1)),
        ((0.0, math.inf, 3.8), 3.8 / (analysis.DIFF_BINS - 1)),  # the finite maximum
        ((0.0, math.inf, math.inf), 1.0),  # nothing finite above the low: unit bins
        ((0.0, math.nan, math.nan), 1.0),
        ((math.inf, math.inf, math.inf), None),  # no finite low: no histogram
        ((-1.7e308, 1.7e308, 1.7e308), None),  # a span past the largest double
    ],
)
def test_diff_histogram_bins_are_finite(
    diff_range: tuple[float, float, float], width: float | None
) -> None:
    pair: Any = SimpleNamespace(comparator="numeric", diff_range=diff_range)
    ranges = analysis.diff_ranges({("r", "s"): pair})
    if width is None:
        assert ranges == {}
    else:
        assert ranges[("r", "s")][2] == diff_range[0]
        assert math.isclose(ranges[("r", "s")][3], width)


def test_a_spark_session_that_cannot_start_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)  # as without pyspark
    with pytest.raises(ReportInputError, match="needs pyspark"):
        with open_engine(ReportOptions(root=str(tmp_path), engine="spark")):
            pass
    assert list(tmp_path.iterdir()) == []


CONNECT = """
import sys, tempfile
tempfile.tempdir = sys.argv[1]
from shadowproxy.report import ReportInputError, ReportOptions
from shadowproxy.report.engines import spark
try:
    with spark.open_engine(ReportOptions(root=sys.argv[1], engine="spark", spark_master=sys.argv[2])):
        pass
except ReportInputError as exc:
    print(exc)
"""
"""A report against a Spark Connect server, in a process of its own (a Connect session
switches pyspark to Connect mode for the rest of its process)."""


@pytest.mark.timeout(30)
def test_a_spark_connect_server_that_refuses_is_a_clear_error(tmp_path: Path) -> None:
    """The client connects lazily: the first round trip is where a wrong server shows."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install '.[spark]')")

    class Refuse(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            def refuse(request: Any, context: Any) -> None:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "not a Spark Connect server")

            return grpc.unary_unary_rpc_method_handler(refuse)

    server = grpc.server(ThreadPoolExecutor(2), handlers=[Refuse()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-W",
                "ignore",
                "-c",
                CONNECT,
                str(tmp_path),
                f"sc://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=25,
        )
    finally:
        server.stop(None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"cannot start Spark (sc://127.0.0.1:{port}): not a Spark Connect server"
    )
    assert list(tmp_path.iterdir()) == []  # no temporary directory left
