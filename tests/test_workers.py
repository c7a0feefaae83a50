"""``serve --workers N``: one port, N processes, one admin listener, merged metrics."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pyarrow.dataset as ds
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.admin.metrics_merge import WorkerExpositions, merge_expositions
from tests.support import free_port, route, upstream, wait_listening, write_config


def _exposition(requests: float, latency: list[float], open_: float, in_flight: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("shadowproxy_requests", "Requests.", ["route", "code"], registry=registry)
    counter.labels("r", "200").inc(requests)
    histogram = Histogram(
        "shadowproxy_request_duration_seconds", "Latency.", ["route"], buckets=(0.1, 1.0),
        registry=registry,
    )  # fmt: skip
    for value in latency:
        histogram.labels("r").observe(value)
    flag = Gauge("shadowproxy_shadow_circuit_open", "Open.", ["shadow"], registry=registry)
    flag.labels("s").set(open_)
    gauge = Gauge("shadowproxy_shadow_in_flight", "In flight.", ["shadow"], registry=registry)
    gauge.labels("s").set(in_flight)
    return generate_latest(registry).decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_merged_exposition_adds_amounts_and_takes_the_max_of_flags() -> None:
    merged = merge_expositions(
        [_exposition(3, [0.05, 0.5], 0, 2), _exposition(4, [0.05, 5.0], 1, 5)]
    )
    samples = _samples(merged)
    assert samples[("shadowproxy_requests_total", (("code", "200"), ("route", "r")))] == 7
    bucket = "shadowproxy_request_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.1"), ("route", "r")))] == 2
    assert samples[(bucket, (("le", "1.0"), ("route", "r")))] == 3
    assert samples[(bucket, (("le", "+Inf"), ("route", "r")))] == 4
    assert samples[("shadowproxy_request_duration_seconds_count", (("route", "r"),))] == 4
    assert samples[("shadowproxy_request_duration_seconds_sum", (("route", "r"),))] == 5.6
    assert samples[("shadowproxy_shadow_circuit_open", (("shadow", "s"),))] == 1
    assert samples[("shadowproxy_shadow_in_flight", (("shadow", "s"),))] == 7
    assert "# TYPE shadowproxy_requests_total counter" in merged
    assert "_created" not in merged


def test_families_are_combined_by_name_wherever_they_appear() -> None:
    """A family met again, later in one exposition or in another, is one family."""
    first, second = _exposition(3, [0.05], 0, 2), _exposition(4, [0.5], 1, 5)
    merged = merge_expositions([first + second, first])
    for name in ("shadowproxy_requests_total", "shadowproxy_shadow_circuit_open"):
        assert merged.count(f"# HELP {name} ") == 1
        assert merged.count(f"# TYPE {name} ") == 1
    samples = _samples(merged)
    assert samples[("shadowproxy_requests_total", (("code", "200"), ("route", "r")))] == 10
    assert samples[("shadowproxy_shadow_circuit_open", (("shadow", "s"),))] == 1


def test_label_values_survive_escaping() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "Help with \\ and\nnewline.", ["v"], registry=registry)
    counter.labels('quote " back \\ nl \n').inc()
    text = generate_latest(registry).decode()
    merged = merge_expositions([text, text])
    assert _samples(merged) == {("c_total", (("v", 'quote " back \\ nl \n'),)): 2.0}


async def _wait_ready(admin: str, session: aiohttp.ClientSession) -> dict[str, object]:
    for _ in range(300):
        try:
            async with session.get(f"{admin}/readyz") as response:
                if response.status == 200:
                    body: dict[str, object] = await response.json()
                    return body
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the workers never became ready")


async def _metric(session: aiohttp.ClientSession, admin: str, name: str, **labels: str) -> float:
    async with session.get(f"{admin}/metrics") as response:
        text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_two_workers_share_the_port_record_and_merge_metrics(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    async with upstream() as production, upstream() as shadow:
        config = write_config(
            tmp_path,
            [route("m", production.url, [{"name": "s", "url": shadow.url}])],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin_port}",
            recording={"dir": str(tmp_path / "shadow-logs"), "flush_interval_s": 0.2},
        )
        log = (tmp_path / "serve.log").open("wb")
        # A file, not a pipe: nobody reads a pipe while the test runs, and N workers
        # logging into a full one would block.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "serve", "--config", str(config),
            "--workers", "2", stdout=log, stderr=log,
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                ready = await _wait_ready(admin, session)
                workers = ready["workers"]
                assert isinstance(workers, list) and len(workers) == 2
                await wait_listening(port)
                # A new connection per request: the kernel spreads them over workers.
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as fresh:
                    for index in range(200):
                        async with fresh.post(
                            f"http://127.0.0.1:{port}/v1/models/m:predict",
                            data=b'{"instances": [%d]}' % index,
                        ) as response:
                            assert response.status == 200
                            await response.read()
                requests = await _metric(
                    session, admin, "shadowproxy_requests_total", route="m", code="200"
                )
                assert requests == 200
                assert await _metric(session, admin, "shadowproxy_workers") == 2
                async with session.get(f"{admin}/routes") as response:
                    assert response.status == 200
                    assert "m" in await response.text()

                # A reload reaches every worker; a broken file is refused by all.
                route_file = tmp_path / "routes" / "m.yaml"
                good = route_file.read_text()
                document = yaml.safe_load(good)
                document["shadows"][0]["sample_rate"] = 0.5
                route_file.write_text(yaml.safe_dump(document))
                async with session.post(f"{admin}/reload") as response:
                    reload = await response.json()
                    assert response.status == 200, reload
                assert [w["result"] for w in reload["workers"]] == ["success", "success"]
                document["shadows"][0]["sample_rate"] = 7
                route_file.write_text(yaml.safe_dump(document))
                async with session.post(f"{admin}/reload") as response:
                    reload = await response.json()
                    assert response.status == 422
                assert all("sample_rate" in w["error"] for w in reload["workers"])
                route_file.write_text(good)
                async with session.post(f"{admin}/reload") as response:
                    assert response.status == 200
                failures = await _metric(
                    session, admin, "shadowproxy_config_reloads_total", result="failure"
                )
                assert failures == 1

                for _ in range(100):
                    written = await _metric(
                        session, admin, "shadowproxy_records_written_total", kind="pairs"
                    )
                    if written == 200:
                        break
                    await asyncio.sleep(0.1)
                assert written == 200

                # A worker that dies is replaced; traffic goes on.
                victim = workers[0]
                assert isinstance(victim, dict)
                os.kill(int(victim["pid"]), signal.SIGKILL)
                for _ in range(300):
                    await asyncio.sleep(0.1)
                    state = await _wait_ready(admin, session)
                    workers_now = state["workers"]
                    assert isinstance(workers_now, list)
                    replaced = victim["pid"] not in {w["pid"] for w in workers_now}
                    if replaced and all(w["ready"] for w in workers_now):
                        break
                else:
                    raise AssertionError("the dead worker was not replaced")
                assert await _metric(session, admin, "shadowproxy_worker_restarts_total") == 1
                async with fresh_session() as again:
                    for _ in range(20):
                        async with again.get(f"http://127.0.0.1:{port}/v1/models/m") as response:
                            assert response.status == 200
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            log.close()
        output = (tmp_path / "serve.log").read_text()
        assert code == 0, output
    table = ds.dataset(tmp_path / "shadow-logs" / "pairs", partitioning="hive").to_table()
    # Every pair was in a file before the kill; the 20 after it are there too.
    assert table.num_rows == 220
    files = list((tmp_path / "shadow-logs" / "pairs").rglob("*.parquet"))
    pids = {re.split(r"-", path.name)[1] for path in files}
    assert len(pids) >= 2, files


def fresh_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    async with upstream() as production:
        config = write_config(
            tmp_path,
            [route("m", production.url)],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin_port}",
        )
        log = (tmp_path / "serve.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "serve", "--config", str(config),
            "--workers", "2", stdout=log, stderr=log,
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                ready = await _wait_ready(admin, session)
            pids = [int(w["pid"]) for w in ready["workers"]]  # type: ignore[attr-defined]
            process.kill()
            await process.wait()
            for _ in range(150):
                alive = [pid for pid in pids if _running(pid)]
                if not alive:
                    break
                await asyncio.sleep(0.1)
            assert not alive, f"orphaned workers {alive}"
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            log.close()
    # Nothing holds the shared port any more.
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    writer.close()
    raise AssertionError("the traffic port still accepts connections")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_canary_routes_are_refused_with_several_workers(tmp_path: Path) -> None:
    canary = route("price", "http://127.0.0.1:9", mode="canary")
    canary["canary"] = {"candidate": {"name": "v2", "url": "http://127.0.0.1:9"}}
    config = write_config(tmp_path, [canary])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowproxy", "serve", "--config", str(config),
        "--workers", "2", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert b"price run a canary" in output and b"--workers 1" in output


def test_merged_counters_never_go_down_when_a_scrape_fails_or_a_worker_restarts() -> None:
    def requests(total: float) -> float:
        return _samples(merged)[("shadowproxy_requests_total", (("code", "200"), ("route", "r")))]

    expositions = WorkerExpositions()
    expositions.update(0, 100, _exposition(1000, [], 0, 3))
    expositions.update(1, 101, _exposition(1000, [], 0, 4))
    merged = expositions.merged()
    assert requests(0) == 2000
    expositions.update(1, 101, None)  # one scrape of worker 1 failed: its last one stands
    merged = expositions.merged()
    assert requests(0) == 2000
    expositions.update(1, 202, _exposition(1, [], 0, 1))  # worker 1 restarted from zero
    merged = expositions.merged()
    assert requests(0) == 2001
    in_flight = _samples(merged)[("shadowproxy_shadow_in_flight", (("shadow", "s"),))]
    assert in_flight == 3 + 1  # the dead process's gauges are gone, not summed
