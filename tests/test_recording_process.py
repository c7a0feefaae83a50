"""The recorder in its own process: same files, metrics served by the parent, a dead
writer restarted, bounds still counted."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shadowproxy.config import Config, MainConfig
from shadowproxy.errors import ConfigError
from shadowproxy.metrics import Metrics
from shadowproxy.recording import read_dataset, read_exposures, read_feedback, wire
from shadowproxy.recording.child import WRITER_NICENESS, read_frame
from shadowproxy.recording.forkserver import ForkServer
from shadowproxy.recording.process import RecorderProcess
from tests.test_recording import (
    TS,
    duck,
    make_exposure,
    make_pair,
    make_route,
    parquet_files,
    wait_until,
)


def config(root: Path, **recording: Any) -> Config:
    route = make_route()
    main = MainConfig.model_validate({"recording": {"dir": str(root), **recording}})
    return Config(source="test", main=main, routes=(route,), route_sources=("test",))


def parent_metrics() -> tuple[CollectorRegistry, Metrics]:
    registry = CollectorRegistry()
    return registry, Metrics(registry, recorder_registry=CollectorRegistry())


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_pairs_survive_the_wire_unchanged() -> None:
    pair = make_pair(3)
    back = wire.unpack(wire.pack(pair))
    assert back.request.headers == []
    pair.request.headers = []
    assert back == pair


def test_content_encodings_survive_the_wire() -> None:
    """The writer process decodes bodies by them: losing one would record gzip bytes."""
    pair = make_pair(3)
    pair.request.content_encoding = "gzip"
    pair.production.content_encoding = "br"
    pair.result.content_encoding = "gzip, zstd"
    back = wire.unpack(wire.pack(pair))
    assert back.request.content_encoding == "gzip"
    assert back.production.content_encoding == "br"
    assert back.result.content_encoding == "gzip, zstd"


async def test_exposures_survive_the_wire_unchanged() -> None:
    exposures = [make_exposure(1), replace(make_exposure(2), unit=None, status=None, chaos="x")]
    reader = asyncio.StreamReader()
    reader.feed_data(wire.frame(wire.EXPOSURES, [wire.pack_exposure(e) for e in exposures]))
    reader.feed_eof()
    frame = await read_frame(reader)
    assert frame is not None
    kind, payload = frame
    assert kind == wire.EXPOSURES
    assert [wire.unpack_exposure(packed) for packed in payload] == exposures


async def test_rows_metrics_and_feedback_through_the_writer_process(tmp_path: Path) -> None:
    registry, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, flush_interval_s=0.2), metrics)
    await recorder.start()
    # The writer yields the CPU to the proxy (production's latency first).
    assert recorder._process is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    writer = os.getpriority(os.PRIO_PROCESS, recorder._process.pid)
    assert writer == min(ours + WRITER_NICENESS, 19)
    for n in range(500):
        recorder.submit(make_pair(n))
    assert recorder.submit_feedback([("req-1", "1", 1.0), ("req-2", "0", 1.0)])
    await wait_until(lambda: recorder.pending == 0, within_s=20)
    assert recorder.health()["status"] == "ok"
    await recorder.close()
    assert read_dataset(str(tmp_path)).num_rows == 500
    assert read_feedback(str(tmp_path)).num_rows == 2
    # The writer's metrics are served by the parent's registry, once each.
    assert sample(registry, "shadowproxy_records_written_total", kind="pairs") == 500
    labels = {"route": "price", "shadow": "cand"}
    assert sample(registry, "shadowproxy_comparisons_total", **labels, result="disagree") == 500
    text = generate_latest(registry).decode()
    assert text.count("# TYPE shadowproxy_records_dropped_total counter") == 1
    assert text.count("# TYPE shadowproxy_comparisons_total counter") == 1


async def test_parent_bound_counts_queue_full_while_the_writer_is_stuck(tmp_path: Path) -> None:
    registry, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, max_pending_records=100), metrics)
    await recorder.start()
    process = recorder._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        for n in range(150):
            recorder.submit(make_pair(n))
        assert sample(registry, "shadowproxy_records_dropped_total", reason="queue_full") == 50
        assert not recorder.submit_feedback([("r", "1", 1.0)])
    finally:
        os.kill(process.pid, signal.SIGCONT)
    await recorder.close()
    assert read_dataset(str(tmp_path)).num_rows == 100


async def test_a_dead_writer_is_restarted_and_its_losses_counted(tmp_path: Path) -> None:
    registry, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, flush_interval_s=0.1), metrics)
    await recorder.start()
    for n in range(50):
        recorder.submit(make_pair(n))
    await wait_until(lambda: recorder.pending == 0, within_s=20)
    first = recorder._process
    assert first is not None
    first.kill()
    await wait_until(lambda: recorder.health()["status"] == "degraded", within_s=5)
    await wait_until(
        lambda: recorder._process is not first and recorder.health()["status"] == "ok",
        within_s=20,
    )
    for n in range(50, 80):
        recorder.submit(make_pair(n))
    await recorder.close()
    ids = set(read_dataset(str(tmp_path)).column("request_id").to_pylist())
    assert {f"req-{n}" for n in range(50, 80)} <= ids
    assert len(ids) == 80
    assert sample(registry, "shadowproxy_records_dropped_total", reason="writer_died") == 0


async def test_verdict_counts_come_back_and_survive_a_writer_restart(tmp_path: Path) -> None:
    _, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path), metrics)
    await recorder.start()
    assert recorder.verdict_counts() == {}
    for n in range(30):
        # make_pair's answers differ; equal bodies agree.
        recorder.submit(make_pair(n) if n % 3 else make_pair(n, shadow_body=b'{"y": 1}'))
    key = ("price", "cand")
    await wait_until(lambda: recorder.verdict_counts().get(key) == (10, 20), within_s=20)
    first = recorder._process
    assert first is not None
    first.kill()
    await wait_until(
        lambda: recorder._process not in (None, first) and recorder.health()["status"] == "ok",
        within_s=20,
    )
    # The new writer counts from zero; the parent keeps the sum, so counts never go down.
    assert recorder.verdict_counts() == {key: (10, 20)}
    for n in range(30, 40):
        recorder.submit(make_pair(n, shadow="other"))
        recorder.submit(make_pair(n))
    await wait_until(lambda: recorder.verdict_counts().get(key) == (10, 30), within_s=20)
    await recorder.close()
    assert recorder.verdict_counts() == {key: (10, 30), ("price", "other"): (0, 10)}


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_both_writers_are_selectable(tmp_path: Path, writer: str) -> None:
    assert config(tmp_path, writer=writer).main.recording.writer == writer


async def test_shutdown_ships_what_is_buffered(tmp_path: Path) -> None:
    _, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path), metrics)
    await recorder.start()
    for n in range(300):
        recorder.submit(make_pair(n))
    await recorder.close()  # no wait: close itself ships, flushes and waits
    assert read_dataset(str(tmp_path)).num_rows == 300
    recorder.submit(make_pair(999))
    await asyncio.sleep(0)
    assert read_dataset(str(tmp_path)).num_rows == 300


async def test_a_bad_recording_dir_fails_at_start(tmp_path: Path) -> None:
    _, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, dir="nosuchscheme://bucket/x"), metrics)
    with pytest.raises(ConfigError, match=r"recording\.dir"):
        await recorder.start()
    await recorder.close()


async def test_records_a_writer_dies_with_are_counted_not_silently_lost(tmp_path: Path) -> None:
    await losses_of_a_killed_writer_are_counted(tmp_path, None)


async def losses_of_a_killed_writer_are_counted(tmp_path: Path, forks: ForkServer | None) -> None:
    """A writer stopped with a batch in its pipe, then killed: the batch is counted as
    ``writer_died``, and its successor (spawned, or forked by ``forks``) records on."""
    registry, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, flush_interval_s=0.1), metrics, forks)
    await recorder.start()
    first = recorder._process
    assert first is not None
    os.kill(first.pid, signal.SIGSTOP)  # it takes the batch into its pipe, writes nothing
    for n in range(50):
        recorder.submit(make_pair(n))
    await wait_until(lambda: recorder._shipped == 50)
    first.kill()
    await wait_until(
        lambda: recorder._process not in (None, first) and recorder.health()["status"] == "ok",
        within_s=20,
    )
    assert sample(registry, "shadowproxy_records_dropped_total", reason="writer_died") == 50
    for n in range(50, 80):
        recorder.submit(make_pair(n))
    await recorder.close()
    assert read_dataset(str(tmp_path)).num_rows == 30
    assert recorder.pending == 0


# --- exposures -----------------------------------------------------------------------


async def test_exposures_through_the_writer_process(tmp_path: Path) -> None:
    registry, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, flush_interval_s=0.2), metrics)
    await recorder.start()
    for n in range(300):
        recorder.submit_exposure(make_exposure(n, arm=("control", "canary")[n % 2]))
        if n % 3 == 0:
            recorder.submit(make_pair(n))
    await wait_until(lambda: recorder.pending == 0, within_s=20)
    await recorder.close()
    [folder] = {path.parent for path in parquet_files(tmp_path / "exposures")}
    assert folder.relative_to(tmp_path).as_posix() == "exposures/route=price/date=2024-05-17"
    table = read_exposures(str(tmp_path))
    assert table.num_rows == 300
    assert len(set(table.column("request_id").to_pylist())) == 300
    arms = table.column("arm").to_pylist()
    assert (arms.count("control"), arms.count("canary")) == (150, 150)
    assert table.column("ts")[0].as_py().timestamp() == TS
    query = "SELECT route, typeof(status), count(*) FROM {pairs} GROUP BY ALL"
    assert duck(tmp_path, query, kind="exposures") == [("price", "INTEGER", 300)]
    assert read_dataset(str(tmp_path)).num_rows == 100
    assert sample(registry, "shadowproxy_records_written_total", kind="exposures") == 300
    assert sample(registry, "shadowproxy_records_written_total", kind="pairs") == 100


async def test_exposures_count_against_the_parent_bound(tmp_path: Path) -> None:
    registry, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, max_pending_records=100), metrics)
    await recorder.start()
    process = recorder._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        for n in range(60):
            recorder.submit(make_pair(n))
        for n in range(60):
            recorder.submit_exposure(make_exposure(n))
        assert sample(registry, "shadowproxy_records_dropped_total", reason="queue_full") == 20
    finally:
        os.kill(process.pid, signal.SIGCONT)
    await recorder.close()
    recorder.submit_exposure(make_exposure(99))
    assert sample(registry, "shadowproxy_records_dropped_total", reason="shutdown") == 1
    assert read_dataset(str(tmp_path)).num_rows == 60
    assert read_exposures(str(tmp_path)).num_rows == 40


async def test_exposures_a_writer_dies_with_are_counted(tmp_path: Path) -> None:
    registry, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, flush_interval_s=0.1), metrics)
    await recorder.start()
    first = recorder._process
    assert first is not None
    os.kill(first.pid, signal.SIGSTOP)  # it takes the batch into its pipe, writes nothing
    for n in range(50):
        recorder.submit_exposure(make_exposure(n))
    await wait_until(lambda: recorder._shipped == 50)
    first.kill()
    await wait_until(
        lambda: recorder._process not in (None, first) and recorder.health()["status"] == "ok",
        within_s=20,
    )
    assert sample(registry, "shadowproxy_records_dropped_total", reason="writer_died") == 50
    for n in range(50, 80):
        recorder.submit_exposure(make_exposure(n))
    await recorder.close()
    assert read_exposures(str(tmp_path)).num_rows == 30
    assert recorder.pending == 0
