"""The recorder against a real S3 server on loopback: writes, outages, spill, bounds.

The server is moto's (``tests.s3``); the recorder reaches it through
``recording.endpoint_url``, as it would MinIO. Stopping the server is the outage:
connections are refused, as when a bucket's endpoint is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.config import RecordingConfig
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from shadowproxy.recording.storage import Storage
from shadowproxy.recording.writer import Writer
from tests.s3 import SECRET, S3Server, s3_server
from tests.test_recording import make_pair, make_route, wait_until


@pytest.fixture
def s3() -> Iterator[S3Server]:
    """A server with a fresh bucket: moto keeps buckets for the whole test process."""
    with s3_server() as server:
        server.create_bucket(server.bucket)
        yield server


def recording(server: S3Server, **overrides: Any) -> RecordingConfig:
    return RecordingConfig.model_validate(
        {"dir": server.root, "endpoint_url": server.url, "flush_interval_s": 0.1, **overrides}
    )


def dropped(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("shadowproxy_records_dropped_total", {"reason": reason})
    return value or 0.0


def request_ids(server: S3Server) -> list[str]:
    table = read_dataset(server.root, endpoint_url=server.url)
    return sorted(table.column("request_id").to_pylist())


async def test_rows_reach_the_bucket_and_read_back(s3: S3Server) -> None:
    recorder = Recorder(recording(s3), [make_route()], Metrics(CollectorRegistry()))
    await recorder.start()
    for n in range(5):
        recorder.submit(make_pair(n))
    await recorder.close()
    assert request_ids(s3) == [f"req-{n}" for n in range(5)]
    [key] = s3.keys(f"{s3.bucket}/fleet/pairs")
    assert key.startswith(f"{s3.bucket}/fleet/pairs/route=price/date=2024-05-17/")


class AnswerLost(Storage):
    """The upload completes, then the answer is lost (a reset, a timeout): the writer
    cannot tell this from a failed upload and must retry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def write(self, directory: str, data: Any, name: str | None = None) -> str:
        path = super().write(directory, data, name)
        self.calls += 1
        if self.calls == 1:
            raise OSError("connection reset by peer after the upload")
        return path


def test_a_retry_after_an_ambiguous_failure_leaves_one_file(s3: S3Server) -> None:
    settings = recording(s3)
    storage = AnswerLost(s3.root, endpoint_url=s3.url)
    now = [0.0]
    writer = Writer(
        storage, settings, [make_route()], Metrics(CollectorRegistry()), None, lambda: now[0]
    )
    writer.take([make_pair(n) for n in range(3)])
    writer.rotate(everything=True)
    writer.write_due()
    assert writer.error is not None  # the first attempt looked like a failure
    writer.write_due(retry_now=True)
    assert writer.error is None and writer.idle
    assert storage.calls == 2
    assert len(s3.keys(f"{s3.bucket}/fleet/pairs")) == 1
    assert request_ids(s3) == ["req-0", "req-1", "req-2"]


async def test_an_outage_degrades_then_everything_is_uploaded_once(s3: S3Server) -> None:
    registry = CollectorRegistry()
    recorder = Recorder(recording(s3), [make_route()], Metrics(registry))
    await recorder.start()
    recorder.submit(make_pair(0))
    await wait_until(lambda: recorder.pending == 0)
    s3.stop()
    for n in range(1, 21):
        recorder.submit(make_pair(n))
    await wait_until(lambda: recorder.health()["status"] == "degraded")
    assert f"cannot write to {s3.root}" in str(recorder.health()["error"])
    s3.start()
    await wait_until(lambda: recorder.pending == 0, within_s=40)  # backoff up to 30 s
    await recorder.close()
    assert recorder.health()["status"] == "ok"
    assert request_ids(s3) == sorted(f"req-{n}" for n in range(21))
    assert sum(dropped(registry, r) for r in ("queue_full", "buffer_full", "write_failed")) == 0


class SlowingDown:
    """A real HTTP hop in front of the S3 server that answers every request with S3's
    ``503 SlowDown`` while ``refusing`` is set, and forwards it untouched otherwise:
    the throttling a shared bucket gives a fleet that writes too often."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.refusing = False
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._client = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.refusing:
            self.refused += 1
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                "<Message>Please reduce your request rate.</Message></Error>"
            )
            return web.Response(status=503, text=body, content_type="application/xml")
        assert self._client is not None
        framing = ("host", "content-length", "transfer-encoding", "connection")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in framing}
        headers["Host"] = self.upstream.removeprefix("http://")
        async with self._client.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            content = await answer.read()
            passed = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
            return web.Response(status=answer.status, body=content, headers=passed)


async def test_503_slow_down_degrades_then_everything_is_uploaded_once(s3: S3Server) -> None:
    hop = SlowingDown(s3.url)
    await hop.start()
    registry = CollectorRegistry()
    settings = RecordingConfig.model_validate(
        {"dir": s3.root, "endpoint_url": hop.url, "flush_interval_s": 0.1}
    )
    recorder = Recorder(settings, [make_route()], Metrics(registry))
    try:
        await recorder.start()
        recorder.submit(make_pair(0))
        await wait_until(lambda: recorder.pending == 0)
        hop.refusing = True
        for n in range(1, 11):
            recorder.submit(make_pair(n))
        await wait_until(lambda: recorder.health()["status"] == "degraded")
        error = str(recorder.health()["error"])
        assert f"cannot write to {s3.root}" in error and SECRET not in error
        assert hop.refused > 0
        hop.refusing = False
        await wait_until(lambda: recorder.pending == 0, within_s=40)
        await recorder.close()
    finally:
        await hop.close()
    assert recorder.health()["status"] == "ok"
    assert request_ids(s3) == sorted(f"req-{n}" for n in range(11))
    assert sum(dropped(registry, r) for r in ("queue_full", "buffer_full", "write_failed")) == 0


def require_credentials(server: S3Server, checked: bool) -> None:
    """Turn the S3 server's authentication on or off: once on, it knows no access key,
    so every request is refused as a rotated or mistyped key would be (moto's
    ``/moto-api/reset-auth``: the number of requests still let through unchecked)."""
    count = b"0" if checked else b"inf"
    request = urllib.request.Request(
        server.url + "/moto-api/reset-auth",
        count,
        {"Content-Type": "text/plain"},  # a form body would be parsed away
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


async def test_refused_credentials_degrade_then_everything_is_uploaded_once(
    s3: S3Server,
) -> None:
    registry = CollectorRegistry()
    recorder = Recorder(recording(s3), [make_route()], Metrics(registry))
    await recorder.start()
    try:
        recorder.submit(make_pair(0))
        await wait_until(lambda: recorder.pending == 0)
        require_credentials(s3, True)
        for n in range(1, 11):
            recorder.submit(make_pair(n))
        await wait_until(lambda: recorder.health()["status"] == "degraded")
        error = str(recorder.health()["error"])
        assert f"cannot write to {s3.root}" in error and SECRET not in error
    finally:
        require_credentials(s3, False)
    await wait_until(lambda: recorder.pending == 0, within_s=40)
    await recorder.close()
    assert recorder.health()["status"] == "ok"
    assert request_ids(s3) == sorted(f"req-{n}" for n in range(11))
    assert sum(dropped(registry, r) for r in ("queue_full", "buffer_full", "write_failed")) == 0


async def test_the_proxy_side_starts_while_the_store_is_unreachable(s3: S3Server) -> None:
    s3.stop()
    recorder = Recorder(recording(s3), [make_route()], Metrics(CollectorRegistry()))
    await recorder.start()  # no exception: an outage is not a config error
    recorder.submit(make_pair(0))
    await wait_until(lambda: recorder.health()["status"] == "degraded")
    s3.start()
    await wait_until(lambda: recorder.pending == 0, within_s=40)
    await recorder.close()
    assert request_ids(s3) == ["req-0"]


async def test_memory_is_bounded_in_bytes_while_the_store_is_down(s3: S3Server) -> None:
    s3.stop()
    registry = CollectorRegistry()
    bound = 1024 * 1024
    settings = recording(s3, max_buffer_bytes=bound, close_timeout_s=0.2)
    recorder = Recorder(settings, [make_route()], Metrics(registry))
    await recorder.start()
    body = bytes(range(256)) * 200  # 51 KB a body, three bodies a pair
    highest = 0
    for n in range(60):
        recorder.submit(make_pair(n, body=body, prod_body=body, shadow_body=body))
        highest = max(highest, recorder.held_bytes)
        await asyncio.sleep(0.005)
    await recorder.close()
    refused = dropped(registry, "buffer_full") + dropped(registry, "write_failed")
    assert highest <= bound
    assert refused > 0
    assert refused + dropped(registry, "shutdown") == 60


async def test_sealed_files_spill_to_disk_and_the_next_writer_uploads_them(
    s3: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = tmp_path / "spill"
    settings = recording(s3, spill_dir=str(spill), close_timeout_s=0.3)
    s3.stop()
    registry = CollectorRegistry()
    first = Recorder(settings, [make_route()], Metrics(registry))
    await first.start()
    for n in range(10):
        first.submit(make_pair(n))
    with caplog.at_level(logging.ERROR, logger="shadowproxy.recording.recorder"):
        await first.close()
    [line] = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert "10 records not written" in line and "10 spilled" in line and "0 of them dropped" in line
    assert dropped(registry, "shutdown") == 0
    assert len(list(spill.rglob("*.parquet"))) >= 1

    s3.start()
    second = Recorder(settings, [make_route()], Metrics(CollectorRegistry()))
    await second.start()
    await second.close()
    assert request_ids(s3) == sorted(f"req-{n}" for n in range(10))
    assert list(spill.rglob("*.parquet")) == []


async def test_a_live_writers_spill_is_not_adopted(s3: S3Server, tmp_path: Path) -> None:
    settings = recording(s3, spill_dir=str(tmp_path / "spill"), close_timeout_s=0.3)
    s3.stop()
    first = Recorder(settings, [make_route()], Metrics(CollectorRegistry()))
    await first.start()
    first.submit(make_pair(0))
    await wait_until(lambda: first.pending == 0)  # spilled after the failed upload
    second = Recorder(settings, [make_route()], Metrics(CollectorRegistry()))
    await second.start()
    assert second._writer.idle  # nothing adopted: the first writer holds its lock
    await second.close()
    s3.start()
    await first.close()
    assert request_ids(s3) == ["req-0"]


def test_the_secret_key_is_in_no_error(s3: S3Server) -> None:
    s3.stop()
    storage = Storage(s3.root, endpoint_url=s3.url)
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        storage.write("pairs", b"data", "x.parquet")
    assert time.monotonic() - started < 5  # fails fast: no retries inside the call
    assert SECRET not in str(failure.value)


async def test_a_spilled_file_lost_from_disk_is_counted_and_blocks_nothing(
    s3: S3Server, tmp_path: Path
) -> None:
    spill = tmp_path / "spill"
    settings = recording(s3, spill_dir=str(spill), max_rows_per_file=5)
    s3.stop()
    registry = CollectorRegistry()
    recorder = Recorder(settings, [make_route()], Metrics(registry))
    await recorder.start()
    for n in range(10):
        recorder.submit(make_pair(n))
    await wait_until(lambda: len(list(spill.rglob("*.parquet"))) == 2)
    first = sorted(spill.rglob("*.parquet"))[0]
    first.unlink()
    s3.start()
    await recorder.close()
    assert len(request_ids(s3)) == 5
    assert dropped(registry, "write_failed") == 5


def test_the_endpoint_comes_from_the_environment_unless_the_file_names_one(
    tmp_path: Path,
) -> None:
    from shadowproxy.config import load_config
    from tests.support import write_config

    path = write_config(tmp_path, [], default_upstream="http://127.0.0.1:1")
    env = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ENDPOINT_URL_S3": "http://s3only:9000/"}
    assert load_config(path, env).main.recording.endpoint_url == "http://s3only:9000"
    assert load_config(path, {}).main.recording.endpoint_url is None
    named = write_config(
        tmp_path,
        [],
        default_upstream="http://127.0.0.1:1",
        recording={"dir": "s3://b/p", "endpoint_url": "https://store:443"},
    )
    assert load_config(named, env).main.recording.endpoint_url == "https://store:443"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("minio:9000", "with its scheme"),
        ("ftp://minio:9000", "with its scheme"),
        ("http://key:secret@minio:9000", "must not carry credentials"),
    ],
)
def test_a_bad_endpoint_is_refused_with_the_reason(value: str, says: str, tmp_path: Path) -> None:
    from shadowproxy.config import load_config
    from shadowproxy.errors import ConfigError
    from tests.support import write_config

    path = write_config(tmp_path, [], default_upstream="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=says) as failure:
        load_config(path, {"AWS_ENDPOINT_URL": value})
    assert "AWS_ENDPOINT_URL" in str(failure.value)
    assert "secret" not in str(failure.value)
    in_file = write_config(
        tmp_path,
        [],
        default_upstream="http://127.0.0.1:1",
        recording={"dir": "s3://b/p", "endpoint_url": value},
    )
    with pytest.raises(ConfigError, match=says) as failure:
        load_config(in_file, {})
    assert "recording.endpoint_url" in str(failure.value)
    assert "secret" not in str(failure.value)
