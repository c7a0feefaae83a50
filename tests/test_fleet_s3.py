"""A fleet of sidecars recording into one bucket, through an outage of the store.

Three real ``shadowproxy serve`` processes (each with its writer process) record into
one moto S3 bucket on loopback. The store is stopped mid-run and restarted; production
traffic is answered throughout, every request ends up as exactly one row, and
``shadowproxy report s3://…`` reads all three writers' rows. Separately, a SIGTERM
while the store is down exits within ``drain_timeout_s + close_timeout_s``, spills
what it holds and says in one line how many rows it could not write.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from shadowproxy.recording import read_dataset
from tests.s3 import SECRET, S3Server, s3_server
from tests.support import free_port, route, upstream, wait_listening

PREDICT = "/v1/models/m:predict"
TOKEN = "admin-token-for-the-fleet-test"


class Sidecar:
    """One ``shadowproxy serve`` process, its ports and its log file."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory / name
        self.directory.mkdir()
        self.port = free_port()
        self.admin = free_port()
        self.log = self.directory / "output.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    async def start(self, config: dict[str, Any], env: dict[str, str]) -> None:
        path = self.directory / "shadowproxy.yaml"
        main = {
            **config,
            "listen": f"127.0.0.1:{self.port}",
            "admin_listen": f"127.0.0.1:{self.admin}",
        }
        path.write_text(yaml.safe_dump(main))
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shadowproxy", "serve", "--config", str(path),
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
            )  # fmt: skip
        await wait_listening(self.port)
        await wait_listening(self.admin)

    async def stop(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds to exit)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), 90)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        return code, time.monotonic() - started

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def fleet_config(
    s3: S3Server, prod: str, shadow: str, spill: Path, **recording: Any
) -> dict[str, Any]:
    return {
        "admin_token": TOKEN,
        "drain_timeout_s": 1,
        "routes": [route("m", prod, [{"name": "cand", "url": shadow}])],
        "recording": {
            "dir": s3.root,
            "flush_interval_s": 0.2,
            "spill_dir": str(spill),
            **recording,
        },
    }


def environment(s3: S3Server) -> dict[str, str]:
    """The credentials from the environment, the endpoint as ``AWS_ENDPOINT_URL``."""
    return {**os.environ, "AWS_ENDPOINT_URL": s3.url}


async def send(client: aiohttp.ClientSession, sidecar: Sidecar, ids: list[str]) -> None:
    for request_id in ids:
        headers = {"X-Request-Id": request_id}
        async with client.post(sidecar.url + PREDICT, data=b"{}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()


async def until(check: Callable[[], Awaitable[bool]], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def readyz(client: aiohttp.ClientSession, sidecar: Sidecar) -> tuple[int, dict[str, Any]]:
    async with client.get(sidecar.admin_url + "/readyz") as resp:
        return resp.status, await resp.json()


@pytest.mark.timeout(300)
async def test_three_sidecars_one_bucket_through_an_outage(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    with s3_server() as s3:
        s3.create_bucket(s3.bucket)
        async with upstream() as prod, upstream() as shadow:
            config = fleet_config(s3, prod.url, shadow.url, tmp_path / "spill")
            fleet = [Sidecar(tmp_path, f"p{i}") for i in range(3)]
            await asyncio.gather(*(s.start(config, environment(s3)) for s in fleet))
            sent: list[str] = []

            async def phase(name: str) -> None:
                batches = [[f"{s.directory.name}-{name}-{n}" for n in range(20)] for s in fleet]
                await asyncio.gather(
                    *(send(client, s, b) for s, b in zip(fleet, batches, strict=True))
                )
                sent.extend(i for batch in batches for i in batch)

            async def all_degraded() -> bool:
                return all([await _degraded(client, s) for s in fleet])

            async def all_written() -> bool:
                answers = [await readyz(client, s) for s in fleet]
                return all(
                    code == 200 and body["status"] == "ok" and body["recorder"]["pending"] == 0
                    for code, body in answers
                )

            await phase("before")
            s3.stop()
            await phase("during")
            await until(all_degraded, within_s=30)
            s3.start()
            await phase("after")
            await until(all_written, within_s=60)

            for sidecar in fleet:
                async with client.get(sidecar.admin_url + "/metrics") as resp:
                    metrics = await resp.text()
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with client.get(sidecar.admin_url + "/routes", headers=headers) as resp:
                    assert resp.status == 200
                    routes = await resp.text()
                assert SECRET not in metrics and SECRET not in routes
                dropped = [
                    line for line in metrics.splitlines()
                    if line.startswith("shadowproxy_records_dropped_total")
                ]  # fmt: skip
                assert dropped and all(line.endswith(" 0.0") for line in dropped), dropped
            results = await asyncio.gather(*(s.stop() for s in fleet))
            assert [code for code, _ in results] == [0, 0, 0], [s.output() for s in fleet]
            for sidecar in fleet:
                assert SECRET not in sidecar.output()
                assert "cannot write to" in sidecar.output()  # the outage was seen

        table = read_dataset(s3.root, endpoint_url=s3.url)
        ids = table.column("request_id").to_pylist()
        assert len(ids) == len(sent) == 180
        assert sorted(ids) == sorted(sent)  # every request exactly once
        keys = s3.keys(f"{s3.bucket}/fleet/pairs")
        writers = {key.rsplit("/", 1)[1].rsplit("-", 1)[0] for key in keys}
        assert len(writers) == 3  # <host>-<pid>-<random>: one per writer process

        out = tmp_path / "summary.json"
        report = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "report", s3.root, "--json", str(out),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=environment(s3),
        )  # fmt: skip
        output, _ = await report.communicate()
        assert report.returncode == 0, output.decode()
        summary = json.loads(out.read_text())
        assert sum(pair["rows"] for pair in summary["pairs"]) == 180


@pytest.mark.timeout(120)
async def test_sigterm_while_the_store_is_down_spills_and_says_how_much(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    with s3_server() as s3:
        s3.create_bucket(s3.bucket)
        spill = tmp_path / "spill"
        async with upstream() as prod, upstream() as shadow:
            config = fleet_config(s3, prod.url, shadow.url, spill, close_timeout_s=2)
            sidecar = Sidecar(tmp_path, "p0")
            s3.stop()
            await sidecar.start(config, environment(s3))
            ids = [f"down-{n}" for n in range(25)]
            await send(client, sidecar, ids)
            await until(lambda: _degraded(client, sidecar), within_s=30)
            code, seconds = await sidecar.stop()
        output = sidecar.output()
        assert code == 0, output
        # drain_timeout_s (1) + close_timeout_s (2), plus the time to start and stop
        # the interpreter on a busy machine.
        assert seconds < 1 + 2 + 5, output
        lines = [line for line in output.splitlines() if "records not written" in line]
        assert len(lines) == 1, output
        assert "25 records not written" in lines[0] and "25 spilled" in lines[0]
        assert SECRET not in output

        s3.start()  # the next sidecar on this disk uploads what the last one spilled
        again = Sidecar(tmp_path, "p1")
        await again.start(config, environment(s3))
        await until(lambda: _written(s3, 25), within_s=30)
        await again.stop()
        assert sorted(
            read_dataset(s3.root, endpoint_url=s3.url).column("request_id").to_pylist()
        ) == sorted(ids)


async def _degraded(client: aiohttp.ClientSession, sidecar: Sidecar) -> bool:
    code, body = await readyz(client, sidecar)
    return code == 200 and body["status"] == "degraded"


async def _written(s3: S3Server, rows: int) -> bool:
    table = await asyncio.to_thread(read_dataset, s3.root, endpoint_url=s3.url)
    return bool(table.num_rows == rows)
