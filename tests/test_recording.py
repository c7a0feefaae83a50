"""The recorder end to end: real Parquet files in tmp_path, read back with pyarrow and DuckDB.

Pairs are built directly (no proxy). Time-based behaviour (rotation, retry backoff)
runs on an injected clock; the writer thread re-reads it every ``IDLE_TICK_S``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from shadowproxy.compare import jsonpath
from shadowproxy.config import RecordingConfig, RouteConfig
from shadowproxy.errors import ConfigError
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset, read_exposures, read_feedback
from shadowproxy.recording.schema import EXPOSURES_SCHEMA, PAIRS_SCHEMA
from shadowproxy.records import (
    Comparison,
    Exposure,
    Pair,
    ProductionResult,
    RequestInfo,
    ShadowResult,
)

TS = datetime(2024, 5, 17, 12, 0, tzinfo=UTC).timestamp()
SSN = "987-65-4321"
EMAIL = "ann@example.org"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_route(name: str = "price", **record: Any) -> RouteConfig:
    return RouteConfig.model_validate(
        {
            "name": name,
            "match": {"path_prefix": f"/{name}"},
            "production": {"url": "http://127.0.0.1:1"},
            "shadows": [{"name": "cand", "url": "http://127.0.0.1:2"}],
            "record": record,
        }
    )


def make_request(
    n: int = 0, *, route: str = "price", ts: float = TS, body: bytes | None = None
) -> RequestInfo:
    payload = body if body is not None else orjson.dumps({"x": n})
    return RequestInfo(
        request_id=f"req-{n}",
        ts=ts,
        route=route,
        method="POST",
        path=f"/{route}",
        query="",
        headers=[],
        body=payload,
        body_complete=True,
    )


def make_pair(
    n: int = 0,
    *,
    route: str = "price",
    shadow: str = "cand",
    ts: float = TS,
    body: bytes | None = None,
    prod_body: bytes = b'{"y": 1}',
    shadow_body: bytes = b'{"y": 2}',
    request: RequestInfo | None = None,
) -> Pair:
    info = request or make_request(n, route=route, ts=ts, body=body)
    production = ProductionResult(
        status=200,
        latency_ms=5.0,
        error=None,
        body=prod_body,
        body_truncated=False,
        content_type="application/json",
    )
    result = ShadowResult(
        outcome="ok",
        status=200,
        latency_ms=7.0,
        error=None,
        body=shadow_body,
        body_truncated=False,
        content_type="application/json",
    )
    return Pair(request=info, shadow=shadow, role="candidate", production=production, result=result)


def make_exposure(
    n: int = 0, *, route: str = "price", ts: float = TS, arm: str = "canary"
) -> Exposure:
    return Exposure(
        request_id=f"req-{n}",
        ts=ts,
        route=route,
        arm=arm,
        unit=f"unit-{n % 7}",
        status=200,
        latency_ms=3.5,
        error=None,
    )


def settings(root: Path | str, **overrides: Any) -> RecordingConfig:
    return RecordingConfig.model_validate({"dir": str(root), **overrides})


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


async def wait_until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def duck(root: Path, query: str, kind: str = "pairs") -> list[tuple[Any, ...]]:
    """Run ``query`` with ``{pairs}`` standing for the documented DuckDB reader."""
    source = f"read_parquet('{root}/{kind}/**/*.parquet', hive_partitioning=true)"
    return duckdb.connect().execute(query.format(pairs=source)).fetchall()


# --- the dataset ---------------------------------------------------------------------


async def test_rows_reconcile_with_traffic_and_read_back(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings(tmp_path), [make_route("price"), make_route("churn")], metrics)
    await recorder.start()
    for n in range(5):
        request = make_request(n)
        for shadow in ("cand", "base"):
            recorder.submit(make_pair(request=request, shadow=shadow))
    recorder.submit(make_pair(9, route="churn"))
    await recorder.close()

    table = read_dataset(str(tmp_path))
    assert table.num_rows == 11
    counts = table.group_by(["route", "shadow"]).aggregate([("request_id", "count")])
    assert sorted(counts.to_pylist(), key=str) == sorted(
        [
            {"route": "price", "shadow": "cand", "request_id_count": 5},
            {"route": "price", "shadow": "base", "request_id_count": 5},
            {"route": "churn", "shadow": "cand", "request_id_count": 1},
        ],
        key=str,
    )
    first = table.filter(pa.compute.equal(table["request_id"], "req-9")).to_pylist()[0]
    assert first["date"].isoformat() == "2024-05-17"
    assert first["ts"] == datetime.fromtimestamp(TS, UTC)
    assert sample(metrics.registry, "shadowproxy_records_written_total", kind="pairs") == 11
    assert recorder.pending == 0


async def test_duckdb_reads_the_files_with_the_contract_types(
    tmp_path: Path, metrics: Metrics
) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], metrics)
    await recorder.start()
    recorder.submit(make_pair(1))
    await recorder.close()

    types = dict(
        duck(tmp_path, "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {pairs})")
    )
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE"
    assert types["prod_status"] == types["shadow_status"] == types["batch_size"] == "INTEGER"
    assert types["prod_latency_ms"] == types["diff_score"] == "DOUBLE"
    assert types["request_body"] == types["shadow_body"] == "BLOB"
    assert types["agree"] == types["prod_body_truncated"] == "BOOLEAN"
    assert types["route"] == "VARCHAR"
    assert types["date"] == "DATE"
    assert duck(tmp_path, "SELECT route, shadow, prod_status, request_body FROM {pairs}") == [
        ("price", "cand", 200, b'{"x":1}')
    ]


async def test_documented_duckdb_types_keep_numeric_route_names_text(
    tmp_path: Path, metrics: Metrics
) -> None:
    # DuckDB guesses partition types: a route named "2024" would read as BIGINT.
    recorder = Recorder(settings(tmp_path), [make_route("2024")], metrics)
    await recorder.start()
    recorder.submit(make_pair(route="2024"))
    await recorder.close()
    typed = (
        f"read_parquet('{tmp_path}/pairs/**/*.parquet', hive_partitioning=true, "
        "hive_types={'route': 'VARCHAR', 'date': 'DATE'})"
    )
    rows = duckdb.connect().execute(f"SELECT route, typeof(route) FROM {typed}").fetchall()
    assert rows == [("2024", "VARCHAR")]
    assert read_dataset(str(tmp_path)).column("route").to_pylist() == ["2024"]


async def test_route_is_a_partition_not_a_file_column(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], metrics)
    await recorder.start()
    recorder.submit(make_pair())
    await recorder.close()

    [file] = parquet_files(tmp_path)
    assert file.parent.name == "date=2024-05-17"
    assert file.parent.parent.name == "route=price"
    assert file.parent.parent.parent.name == "pairs"
    schema = pq.read_schema(file)
    assert "route" not in schema.names
    assert schema.equals(PAIRS_SCHEMA, check_metadata=False)
    assert pq.ParquetFile(file).metadata.row_group(0).column(0).compression == "ZSTD"


async def test_dates_follow_the_request_ts_in_utc(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], metrics)
    await recorder.start()
    before = datetime(2024, 5, 17, 23, 59, 59, tzinfo=UTC).timestamp()
    recorder.submit(make_pair(1, ts=before))
    recorder.submit(make_pair(2, ts=before + 2))
    await recorder.close()
    assert sorted(p.parent.name for p in parquet_files(tmp_path)) == [
        "date=2024-05-17",
        "date=2024-05-18",
    ]


async def test_file_names_are_unique_across_recorders(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    first = Recorder(settings(tmp_path), [make_route()], Metrics(CollectorRegistry()))
    second = Recorder(settings(tmp_path), [make_route()], Metrics(CollectorRegistry()))
    for recorder in (first, second):
        await recorder.start()
        recorder.submit(make_pair())
    await asyncio.gather(first.close(), second.close())
    names = [p.name for p in parquet_files(tmp_path)]
    assert len(set(names)) == 2
    assert all(f"-{os.getpid()}-" in name for name in names)


async def test_an_empty_root_reads_as_an_empty_table(tmp_path: Path) -> None:
    table = read_dataset(str(tmp_path / "nothing-yet"))
    assert table.num_rows == 0
    assert {"route", "date", "request_id"} <= set(table.schema.names)


async def test_file_uri_roots_work(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings(f"file://{tmp_path}"), [make_route()], metrics)
    await recorder.start()
    recorder.submit(make_pair())
    await recorder.close()
    assert len(parquet_files(tmp_path)) == 1
    assert read_dataset(f"file://{tmp_path}").num_rows == 1


async def test_an_unknown_scheme_is_a_config_error(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings("nosuch://bucket/logs"), [make_route()], metrics)
    with pytest.raises(ConfigError, match=r"recording\.dir"):
        await recorder.start()


# --- rotation and atomic files -----------------------------------------------------


async def test_rotation_by_rows(tmp_path: Path, metrics: Metrics) -> None:
    clock = FakeClock()
    recorder = Recorder(
        settings(tmp_path, max_rows_per_file=3), [make_route()], metrics, clock=clock
    )
    await recorder.start()
    for n in range(7):
        recorder.submit(make_pair(n))
    # A file is visible (renamed into place) a moment before the writer thread counts
    # its rows: wait for the count too, not only for the file.
    await wait_until(
        lambda: (
            len(parquet_files(tmp_path)) == 2
            and sample(metrics.registry, "shadowproxy_records_written_total", kind="pairs") == 6
        )
    )
    assert recorder.pending == 1  # the 7th row waits for its file
    await recorder.close()
    sizes = sorted(pq.read_metadata(p).num_rows for p in parquet_files(tmp_path))
    assert sizes == [1, 3, 3]


async def test_rotation_by_time(tmp_path: Path, metrics: Metrics) -> None:
    clock = FakeClock()
    recorder = Recorder(
        settings(tmp_path, flush_interval_s=5), [make_route()], metrics, clock=clock
    )
    await recorder.start()
    recorder.submit(make_pair(1))
    await asyncio.sleep(0.3)  # the writer takes it at once (the submit wakes it)
    clock.advance(4.9)
    recorder.submit(make_pair(2))
    await asyncio.sleep(0.3)  # a few writer ticks: still too young
    assert parquet_files(tmp_path) == []
    clock.advance(0.2)
    await wait_until(lambda: len(parquet_files(tmp_path)) == 1)
    assert pq.read_metadata(parquet_files(tmp_path)[0]).num_rows == 2
    await recorder.close()


async def test_files_become_visible_only_when_complete(tmp_path: Path, metrics: Metrics) -> None:
    """A reader polling the directory never sees a .parquet file it cannot fully read."""
    recording = settings(tmp_path, max_rows_per_file=40, max_buffer_bytes=256 * 1024 * 1024)
    recorder = Recorder(recording, [make_route()], metrics)
    problems: list[str] = []
    seen: set[Path] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for path in tmp_path.rglob("*.parquet"):
                if path in seen:
                    continue
                try:
                    assert pq.read_table(path).num_rows == 40
                    seen.add(path)
                except Exception as exc:  # any failure is the finding
                    problems.append(f"{path.name}: {exc!r}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        await recorder.start()
        for n in range(400):
            big = os.urandom(60_000)  # incompressible: every file is MBs and takes a while
            recorder.submit(make_pair(n, body=big, prod_body=big, shadow_body=big))
        await recorder.close()
    finally:
        done.set()
        await asyncio.to_thread(watcher.join)
    assert problems == []
    assert len(parquet_files(tmp_path)) == 10
    assert [p for p in all_files(tmp_path) if p.suffix != ".parquet"] == []


_DISK_FULL = """
import asyncio, os, resource, signal, sys
from prometheus_client import CollectorRegistry
from shadowproxy.metrics import Metrics
from tests.test_recording import Recorder, make_pair, make_route, settings

async def main() -> None:
    recording = settings(sys.argv[1], max_rows_per_file=20, close_timeout_s=0.3)
    recorder = Recorder(recording, [make_route()], Metrics(CollectorRegistry()))
    await recorder.start()
    for n in range(20):  # one ~4 MB file, far over the 1 MB the process may write
        big = os.urandom(64 * 1024)  # incompressible
        recorder.submit(make_pair(n, body=big, prod_body=big, shadow_body=big))
    for _ in range(1000):
        if recorder.health()["status"] != "ok":
            break
        await asyncio.sleep(0.01)
    print(recorder.health()["error"])
    await recorder.close()

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
asyncio.run(main())
"""


def test_a_write_that_fails_midway_leaves_nothing_visible(tmp_path: Path) -> None:
    """The disk fills up in the middle of a file: readers must not find half of it."""
    done = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(tmp_path)],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "File too large" in done.stdout
    assert all_files(tmp_path) == []


async def test_readers_ignore_temporary_and_hidden_files(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], metrics)
    await recorder.start()
    recorder.submit(make_pair())
    await recorder.close()
    folder = parquet_files(tmp_path)[0].parent
    (folder / ".host-1-abc-000009.parquet.tmp").write_bytes(b"PAR1 half written")
    (folder / "_SUCCESS").write_bytes(b"")
    assert read_dataset(str(tmp_path)).num_rows == 1
    assert duck(tmp_path, "SELECT count(*) FROM {pairs}") == [(1,)]


# --- what gets written -------------------------------------------------------------


def _exposes(root: Path, secrets: list[str]) -> list[str]:
    """Every place a secret shows: in raw file bytes (footers, statistics) or in values."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        values = repr(pq.read_table(path).to_pylist()) if path.suffix == ".parquet" else ""
        for secret in secrets:
            if secret.encode() in raw or secret in values or secret.encode().hex() in values:
                found.append(f"{secret} in {path.name}")
    return found


def extract(path: str) -> Callable[[bytes], str | None]:
    compiled = jsonpath.parse(path)

    def get(body: bytes) -> str | None:
        try:
            found = compiled.find(orjson.loads(body))
        except orjson.JSONDecodeError:
            return None
        return orjson.dumps(found[0]).decode() if found else None

    return get


def customer_comparer(pair: Pair) -> Comparison:
    """Extracts the whole ``$.customer`` object: the SSN would land in predictions."""
    get = extract("$.customer")
    prod, shadow = get(pair.production.body), get(pair.result.body)
    agree = None if prod is None or shadow is None else prod == shadow
    return Comparison(
        "exact", prod, shadow, agree, None if agree is None else float(not agree), None
    )


async def test_redacted_values_appear_nowhere(tmp_path: Path, metrics: Metrics) -> None:
    route = make_route(redact=["$.customer.ssn", "$.instances[*].email"])
    recorder = Recorder(settings(tmp_path), [route], metrics, comparer=customer_comparer)
    await recorder.start()
    secret_doc = orjson.dumps(
        {"customer": {"ssn": SSN, "tier": "gold"}, "instances": [{"email": EMAIL, "f": 1}]}
    )
    for n in range(3):
        recorder.submit(make_pair(n, body=secret_doc, prod_body=secret_doc, shadow_body=secret_doc))
    await recorder.close()

    assert _exposes(tmp_path, [SSN, EMAIL]) == []
    row = read_dataset(str(tmp_path)).to_pylist()[0]
    assert orjson.loads(row["request_body"])["customer"] == {"ssn": "[redacted]", "tier": "gold"}
    assert orjson.loads(row["prod_prediction"]) == {"ssn": "[redacted]", "tier": "gold"}
    assert row["agree"] is True


async def test_non_json_bodies_are_withheld_when_redaction_is_configured(
    tmp_path: Path, metrics: Metrics
) -> None:
    route = make_route(redact=["$.customer.ssn"])
    seen: list[bytes] = []

    def comparer(pair: Pair) -> Comparison:
        seen.append(pair.request.body)
        return customer_comparer(pair)

    recorder = Recorder(settings(tmp_path), [route], metrics, comparer=comparer)
    await recorder.start()
    form = f"ssn={SSN}&tier=gold".encode()
    recorder.submit(make_pair(1, body=form, shadow_body=b"<html>" + SSN.encode()))
    await recorder.close()

    assert _exposes(tmp_path, [SSN]) == []
    assert seen == [b""]  # the comparator never saw the raw form either
    row = read_dataset(str(tmp_path)).to_pylist()[0]
    assert (row["request_body"], row["request_body_withheld"]) == (None, True)
    assert (row["shadow_body"], row["shadow_body_withheld"]) == (None, True)
    assert (row["prod_body"], row["prod_body_withheld"]) == (b'{"y":1}', False)


async def test_unknown_routes_keep_metadata_only(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings(tmp_path), [make_route("price")], metrics, customer_comparer)
    await recorder.start()
    doc = orjson.dumps({"customer": {"ssn": SSN}})
    recorder.submit(make_pair(1, route="elsewhere", body=doc, prod_body=doc, shadow_body=doc))
    await recorder.close()
    assert _exposes(tmp_path, [SSN]) == []
    row = read_dataset(str(tmp_path)).to_pylist()[0]
    assert row["route"] == "elsewhere"
    assert (row["request_body"], row["prod_prediction"], row["agree"]) == (None, None, None)


async def test_bodies_false_keeps_metadata_predictions_and_timings(
    tmp_path: Path, metrics: Metrics
) -> None:
    route = make_route(bodies=False)
    recorder = Recorder(settings(tmp_path), [route], metrics, comparer=customer_comparer)
    await recorder.start()
    doc = orjson.dumps({"customer": {"id": 7}})
    recorder.submit(make_pair(1, body=doc, prod_body=doc, shadow_body=doc))
    await recorder.close()
    row = read_dataset(str(tmp_path)).to_pylist()[0]
    assert row["request_body"] is row["prod_body"] is row["shadow_body"] is None
    assert row["prod_prediction"] == '{"id":7}'
    assert (row["prod_latency_ms"], row["shadow_latency_ms"]) == (5.0, 7.0)


async def test_bodies_are_capped_and_flagged(tmp_path: Path, metrics: Metrics) -> None:
    route = make_route(max_body_bytes=8)
    recorder = Recorder(settings(tmp_path), [route], metrics)
    await recorder.start()
    recorder.submit(make_pair(1, body=b"0123456789", prod_body=b"short", shadow_body=b"x" * 9))
    await recorder.close()
    row = read_dataset(str(tmp_path)).to_pylist()[0]
    assert (row["request_body"], row["request_body_truncated"]) == (b"01234567", True)
    assert (row["prod_body"], row["prod_body_truncated"]) == (b"short", False)
    assert (row["shadow_body"], row["shadow_body_truncated"]) == (b"x" * 8, True)


async def test_comparisons_fill_columns_and_metrics(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], metrics, comparer=customer_comparer)
    await recorder.start()
    same = orjson.dumps({"customer": {"id": 1}})
    other = orjson.dumps({"customer": {"id": 2}})
    recorder.submit(make_pair(1, prod_body=same, shadow_body=same))
    recorder.submit(make_pair(2, prod_body=same, shadow_body=other))
    recorder.submit(make_pair(3, prod_body=same, shadow_body=b"not json"))
    await recorder.close()

    rows = {r["request_id"]: r for r in read_dataset(str(tmp_path)).to_pylist()}
    assert (rows["req-1"]["agree"], rows["req-1"]["diff_score"]) == (True, 0.0)
    assert (rows["req-2"]["agree"], rows["req-2"]["comparator"]) == (False, "exact")
    assert rows["req-3"]["agree"] is None
    registry = metrics.registry
    for result in ("agree", "disagree", "incomparable"):
        labels = {"route": "price", "shadow": "cand", "result": result}
        assert sample(registry, "shadowproxy_comparisons_total", **labels) == 1
    count = sample(registry, "shadowproxy_diff_score_count", route="price", shadow="cand")
    assert count == 2
    # The same verdicts, as counts the serving process reads (incomparable left out).
    assert recorder.verdict_counts() == {("price", "cand"): (1, 1)}


async def test_comparer_failures_never_lose_a_row(tmp_path: Path, metrics: Metrics) -> None:
    def flaky(pair: Pair) -> Comparison:
        n = int(pair.request.request_id.split("-")[1])
        if n % 3 == 0:
            raise KeyError("predictions")
        if n % 3 == 1:
            return "not a comparison"  # type: ignore[return-value]
        return customer_comparer(pair)

    recorder = Recorder(settings(tmp_path), [make_route()], metrics, comparer=flaky)
    await recorder.start()
    for n in range(6):
        recorder.submit(make_pair(n))
    await recorder.close()

    rows = {r["request_id"]: r for r in read_dataset(str(tmp_path)).to_pylist()}
    assert len(rows) == 6
    assert rows["req-0"]["compare_detail"] == "comparator error: KeyError: 'predictions'"
    assert rows["req-1"]["compare_detail"] == "comparator error: returned str, not a Comparison"
    assert rows["req-0"]["agree"] is None and rows["req-0"]["comparator"] is None
    assert rows["req-2"]["comparator"] == "exact"
    labels = {"route": "price", "shadow": "cand", "result": "incomparable"}
    assert sample(metrics.registry, "shadowproxy_comparisons_total", **labels) == 6


async def test_a_row_arrow_refuses_costs_only_itself(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], Metrics(registry))
    await recorder.start()
    bad = make_request(1)
    bad.path = "/price/\ud800"  # a lone surrogate: not encodable as UTF-8
    for pair in (make_pair(0), make_pair(request=bad), make_pair(2)):
        recorder.submit(pair)
    await recorder.close()
    ids = sorted(read_dataset(str(tmp_path)).column("request_id").to_pylist())
    assert ids == ["req-0", "req-2"]
    assert sample(registry, "shadowproxy_records_dropped_total", reason="write_failed") == 1
    assert recorder.pending == 0


# --- bounds and failures -----------------------------------------------------------


async def test_a_full_buffer_drops_and_counts(tmp_path: Path, registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    recorder = Recorder(settings(tmp_path, max_pending_records=5), [make_route()], metrics)
    # Not started yet: nothing drains the buffer, as with a writer that can't keep up.
    for n in range(8):
        recorder.submit(make_pair(n))
    assert sample(registry, "shadowproxy_records_dropped_total", reason="queue_full") == 3
    assert recorder.pending == 5
    await recorder.start()
    await recorder.close()
    assert sample(registry, "shadowproxy_records_written_total", kind="pairs") == 5
    assert read_dataset(str(tmp_path)).num_rows == 5
    assert sample(registry, "shadowproxy_recorder_pending_records") == 0


async def test_submit_after_close_is_counted(tmp_path: Path, registry: CollectorRegistry) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], Metrics(registry))
    await recorder.start()
    await recorder.close()
    recorder.submit(make_pair())
    assert sample(registry, "shadowproxy_records_dropped_total", reason="shutdown") == 1
    assert recorder.submit_feedback([("r", "1", TS)]) is False


@pytest.fixture
def blocked_root(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A root below a regular file: every write fails until the file is removed."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    yield blocker, blocker / "logs"


async def test_write_failures_degrade_then_recover(
    blocked_root: tuple[Path, Path], registry: CollectorRegistry
) -> None:
    blocker, root = blocked_root
    clock = FakeClock()
    recording = settings(root, max_rows_per_file=3)
    recorder = Recorder(recording, [make_route()], Metrics(registry), clock=clock)
    await recorder.start()
    assert recorder.health() == {"status": "ok", "pending": 0}
    for n in range(3):
        recorder.submit(make_pair(n))  # a full file: written at once
    await wait_until(lambda: recorder.health()["status"] == "degraded")
    health = recorder.health()
    assert "NotADirectoryError" in str(health["error"]) or "FileExists" in str(health["error"])
    assert health["pending"] == 3
    assert sample(registry, "shadowproxy_recorder_write_errors_total") >= 1
    assert sample(registry, "shadowproxy_recorder_degraded") == 1

    blocker.unlink()  # the operator frees the path
    clock.advance(60)  # past the backoff
    await wait_until(lambda: recorder.health()["status"] == "ok")
    assert sample(registry, "shadowproxy_recorder_degraded") == 0
    assert sample(registry, "shadowproxy_records_written_total", kind="pairs") == 3
    await recorder.close()
    assert read_dataset(str(root)).num_rows == 3
    assert sample(registry, "shadowproxy_records_dropped_total", reason="write_failed") == 0


async def test_while_failing_the_bound_holds_and_drops_are_write_failed(
    blocked_root: tuple[Path, Path], registry: CollectorRegistry
) -> None:
    _, root = blocked_root
    clock = FakeClock()
    recording = settings(root, max_pending_records=3, max_rows_per_file=3, close_timeout_s=0.2)
    recorder = Recorder(recording, [make_route()], Metrics(registry), clock=clock)
    await recorder.start()
    for n in range(3):
        recorder.submit(make_pair(n))
    await wait_until(lambda: recorder.health()["status"] == "degraded")
    recorder.submit(make_pair(3))
    recorder.submit(make_pair(4))
    assert sample(registry, "shadowproxy_records_dropped_total", reason="write_failed") == 2
    assert sample(registry, "shadowproxy_records_dropped_total", reason="queue_full") == 0

    closing = asyncio.ensure_future(recorder.close())  # noqa: TID251 - awaited below
    await asyncio.sleep(0.05)
    clock.advance(1)  # past close_timeout_s: shutdown gives up on what it holds
    await closing
    assert sample(registry, "shadowproxy_records_dropped_total", reason="shutdown") == 3
    assert recorder.pending == 0


async def test_close_does_not_block_the_event_loop(tmp_path: Path, metrics: Metrics) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], metrics)
    await recorder.start()
    big = os.urandom(64 * 1024)
    for n in range(300):
        recorder.submit(make_pair(n, body=big, prod_body=big, shadow_body=big))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())  # noqa: TID251 - cancelled below
    await recorder.close()
    task.cancel()
    assert ticks > 1
    assert read_dataset(str(tmp_path)).num_rows == 300


# --- feedback ------------------------------------------------------------------------


async def test_feedback_files(tmp_path: Path, registry: CollectorRegistry) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], Metrics(registry))
    await recorder.start()
    assert recorder.submit_feedback([("req-1", '{"label": "cat"}', TS), ("req-2", '"dog"', TS)])
    assert recorder.submit_feedback([])
    await recorder.close()

    [file] = list((tmp_path / "feedback").rglob("*.parquet"))
    assert file.parent.name == "date=2024-05-17"
    table = read_feedback(str(tmp_path))
    assert table.to_pylist()[0] == {
        "request_id": "req-1",
        "label": '{"label": "cat"}',
        "ts": datetime.fromtimestamp(TS, UTC),
        "date": datetime(2024, 5, 17).date(),
    }
    assert duck(tmp_path, "SELECT count(*) FROM {pairs}", kind="feedback") == [(2,)]
    assert sample(registry, "shadowproxy_records_written_total", kind="feedback") == 2
    assert read_dataset(str(tmp_path)).num_rows == 0


async def test_feedback_is_all_or_nothing(tmp_path: Path, registry: CollectorRegistry) -> None:
    recorder = Recorder(
        settings(tmp_path, max_pending_records=3), [make_route()], Metrics(registry)
    )
    recorder.submit(make_pair())
    items = [(f"req-{n}", "1", TS) for n in range(3)]
    assert recorder.submit_feedback(items) is False
    assert recorder.pending == 1
    assert recorder.submit_feedback(items[:2]) is True
    assert recorder.pending == 3
    await recorder.start()
    await recorder.close()
    assert read_feedback(str(tmp_path)).num_rows == 2


# --- exposures -----------------------------------------------------------------------


async def test_exposure_files(tmp_path: Path, registry: CollectorRegistry) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], Metrics(registry))
    await recorder.start()
    for n in range(40):
        recorder.submit_exposure(make_exposure(n, arm="canary" if n % 4 else "control"))
    next_day = Exposure(
        request_id="req-x",
        ts=TS + 86_400,
        route="churn",
        arm="b",
        unit=None,
        status=None,
        latency_ms=None,
        error="reset",
    )
    recorder.submit_exposure(next_day)
    recorder.submit(make_pair())
    await recorder.close()

    assert sorted(p.relative_to(tmp_path).parent.as_posix() for p in parquet_files(tmp_path)) == [
        "exposures/route=churn/date=2024-05-18",
        "exposures/route=price/date=2024-05-17",
        "pairs/route=price/date=2024-05-17",
    ]
    file = next((tmp_path / "exposures").rglob("*.parquet"))
    assert pq.read_schema(file).equals(EXPOSURES_SCHEMA, check_metadata=False)
    table = read_exposures(str(tmp_path))
    assert table.num_rows == 41
    assert table.schema.field("status").type == pa.int32()
    rows = {row["request_id"]: row for row in table.to_pylist()}
    assert rows["req-1"] == {
        "ts": datetime.fromtimestamp(TS, UTC), "request_id": "req-1", "arm": "canary",
        "unit": "unit-1", "status": 200, "latency_ms": 3.5, "error": None, "chaos": None, "share": None,
        "route": "price", "date": datetime(2024, 5, 17).date(),
    }  # fmt: skip
    assert rows["req-x"]["status"] is None and rows["req-x"]["error"] == "reset"
    assert sample(registry, "shadowproxy_records_written_total", kind="exposures") == 41
    assert sample(registry, "shadowproxy_records_written_total", kind="pairs") == 1
    assert read_dataset(str(tmp_path)).num_rows == 1


async def test_duckdb_reads_exposures_with_the_contract_types(
    tmp_path: Path, metrics: Metrics
) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], metrics)
    await recorder.start()
    for n in range(3):
        recorder.submit_exposure(make_exposure(n))
    await recorder.close()
    describe = "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {pairs})"
    types = dict(duck(tmp_path, describe, kind="exposures"))
    assert types == {
        "ts": "TIMESTAMP WITH TIME ZONE", "request_id": "VARCHAR", "arm": "VARCHAR",
        "unit": "VARCHAR", "status": "INTEGER", "latency_ms": "DOUBLE", "error": "VARCHAR",
        "chaos": "VARCHAR", "share": "DOUBLE", "route": "VARCHAR", "date": "DATE",
    }  # fmt: skip
    query = "SELECT arm, count(*) FROM {pairs} WHERE route = 'price' GROUP BY arm"
    assert duck(tmp_path, query, kind="exposures") == [("canary", 3)]


async def test_exposures_rotate_like_pairs(tmp_path: Path, metrics: Metrics) -> None:
    clock = FakeClock()
    recording = settings(tmp_path, max_rows_per_file=3)
    recorder = Recorder(recording, [make_route()], metrics, clock=clock)
    await recorder.start()
    for n in range(7):
        recorder.submit_exposure(make_exposure(n))
    # A file is visible (renamed into place) a moment before the writer counts its rows
    # as finished: wait for both.
    await wait_until(lambda: len(parquet_files(tmp_path)) == 2 and recorder.pending == 1)
    await recorder.close()
    assert sorted(pq.read_metadata(p).num_rows for p in parquet_files(tmp_path)) == [1, 3, 3]


async def test_exposures_share_the_bound_and_its_drops(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    recorder = Recorder(
        settings(tmp_path, max_pending_records=5), [make_route()], Metrics(registry)
    )
    for n in range(3):
        recorder.submit(make_pair(n))
    for n in range(4):
        recorder.submit_exposure(make_exposure(n))
    assert sample(registry, "shadowproxy_records_dropped_total", reason="queue_full") == 2
    assert recorder.pending == 5
    await recorder.start()
    await recorder.close()
    recorder.submit_exposure(make_exposure(9))
    assert sample(registry, "shadowproxy_records_dropped_total", reason="shutdown") == 1
    assert read_dataset(str(tmp_path)).num_rows == 3
    assert read_exposures(str(tmp_path)).num_rows == 2
    assert recorder.pending == 0


async def test_an_exposure_that_cannot_be_a_row_costs_only_itself(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    recorder = Recorder(settings(tmp_path), [make_route()], Metrics(registry))
    await recorder.start()
    recorder.submit_exposure(make_exposure(0))
    recorder.submit_exposure(replace(make_exposure(1), arm=None))  # exposure_row refuses it
    recorder.submit_exposure(replace(make_exposure(2), status=2**40))  # Arrow refuses it
    recorder.submit_exposure(make_exposure(3))
    await recorder.close()
    ids = sorted(read_exposures(str(tmp_path)).column("request_id").to_pylist())
    assert ids == ["req-0", "req-3"]
    assert sample(registry, "shadowproxy_records_dropped_total", reason="write_failed") == 2
    assert recorder.pending == 0


async def test_an_empty_root_reads_as_an_empty_exposures_table(tmp_path: Path) -> None:
    table = read_exposures(str(tmp_path / "nothing-yet"))
    assert table.num_rows == 0
    assert table.schema.names == [*EXPOSURES_SCHEMA.names, "route", "date"]
