"""A real recording, made by the CLI proxy, read unchanged by the engines users point at
it: DuckDB, Polars, pyarrow.dataset and Spark (local mode). Each must see the Hive
partitions (``route=``, ``date=``) with ``date`` as a date, the stored columns with
their types, and every row.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.interop.peers import cli_proxy, loopback_upstream
from tests.spark_session import local_session

ROUTES = {"alpha": 30, "beta": 12}
"""Requests per route; one shadow each, so one row per request."""


@dataclass
class Recording:
    pairs: Path
    dates: set[dt.date]
    """UTC dates while the traffic ran (two if it straddled midnight)."""

    @property
    def glob(self) -> str:
        return f"{self.pairs}/**/*.parquet"

    def check(self, counts: dict[str, int], dates: set[dt.date]) -> None:
        assert counts == ROUTES
        assert dates and dates <= self.dates


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    directory = tmp_path_factory.mktemp("parquet-readers")
    with (
        loopback_upstream(directory, "prod") as production,
        loopback_upstream(directory, "shadow") as shadow,
    ):
        routes = [
            {
                "name": name,
                "match": {"path_prefix": f"/v1/models/{name}"},
                "production": {"url": production, "timeout_s": 10},
                "shadows": [{"name": "twin", "url": shadow}],
                "compare": {"prediction": "kserve-v1"},
            }
            for name in ROUTES
        ]
        before = dt.datetime.now(dt.UTC).date()
        with cli_proxy(directory / "proxy", routes) as proxy, requests.Session() as session:
            for name, count in ROUTES.items():
                for i in range(count):
                    url = f"{proxy.url}/v1/models/{name}:predict"
                    response = session.post(url, json={"instances": [[i, 1]]}, timeout=10)
                    assert response.status_code == 200
        after = dt.datetime.now(dt.UTC).date()
    yield Recording(proxy.root / "pairs", {before, after})


def test_duckdb(recording: Recording) -> None:
    duckdb = pytest.importorskip("duckdb")
    connection = duckdb.connect()
    relation = connection.sql(
        f"SELECT * FROM read_parquet('{recording.glob}', hive_partitioning = true)"
    )
    types = dict(zip(relation.columns, map(str, relation.types), strict=True))
    assert types["date"] == "DATE"
    assert types["route"] == "VARCHAR"
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE"
    assert types["prod_status"] == "INTEGER"
    assert types["request_body"] == "BLOB"
    assert types["agree"] == "BOOLEAN"
    rows = connection.sql(
        f"SELECT route, date, agree FROM read_parquet('{recording.glob}', hive_partitioning = true)"
    ).fetchall()
    assert all(agree is True for _, _, agree in rows)
    recording.check(dict(Counter(route for route, _, _ in rows)), {date for _, date, _ in rows})


def test_polars(recording: Recording) -> None:
    pl = pytest.importorskip(
        "polars", reason="polars does not install here (pip install '.[interop]')"
    )
    frame = pl.scan_parquet(recording.glob, hive_partitioning=True).collect()
    schema = frame.schema
    assert schema["date"] == pl.Date
    assert schema["route"] == pl.String
    assert schema["ts"] == pl.Datetime("us", "UTC")
    assert schema["prod_status"] == pl.Int32
    assert schema["request_body"] == pl.Binary
    assert schema["agree"] == pl.Boolean
    assert frame["agree"].all()
    recording.check(dict(Counter(frame["route"].to_list())), set(frame["date"].to_list()))


def test_pyarrow_dataset(recording: Recording) -> None:
    """pyarrow infers a Hive partition as int32 or string only: a reader names the
    partition types, as ``shadowproxy.recording.read_dataset`` does."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(
        pa.schema([("route", pa.string()), ("date", pa.date32())]), flavor="hive"
    )
    table = ds.dataset(recording.pairs, format="parquet", partitioning=partitioning).to_table()
    schema = table.schema
    assert schema.field("date").type == pa.date32()
    assert schema.field("route").type == pa.string()
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert schema.field("prod_status").type == pa.int32()
    assert schema.field("request_body").type == pa.binary()
    assert schema.field("agree").type == pa.bool_()
    assert all(table.column("agree").to_pylist())
    recording.check(
        dict(Counter(table.column("route").to_pylist())), set(table.column("date").to_pylist())
    )


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark session for the module: the JVM takes seconds to start."""
    with local_session("shadowproxy-interop") as session:
        yield session


@pytest.mark.timeout(180)  # the JVM starts here
def test_pyspark(recording: Recording, spark: Any) -> None:
    from pyspark.sql import types as T

    frame = spark.read.parquet(str(recording.pairs))
    fields = {field.name: field.dataType for field in frame.schema.fields}
    assert fields["date"] == T.DateType()
    assert fields["route"] == T.StringType()
    assert fields["ts"] == T.TimestampType()
    assert fields["prod_status"] == T.IntegerType()
    assert fields["request_body"] == T.BinaryType()
    assert fields["agree"] == T.BooleanType()
    rows = frame.select("route", "date", "agree").collect()
    assert all(row["agree"] is True for row in rows)
    recording.check(dict(Counter(row["route"] for row in rows)), {row["date"] for row in rows})
