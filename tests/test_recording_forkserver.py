"""Writers forked by the fork server: same rows, a killed writer forked again, a killed
server replaced by spawned writers, and ``serve`` ending all three processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from shadowproxy.errors import ConfigError
from shadowproxy.pages import parse_smaps
from shadowproxy.recording import forkserver, read_dataset
from shadowproxy.recording.child import WRITER_NICENESS
from shadowproxy.recording.forkserver import ForkServer
from shadowproxy.recording.process import RecorderProcess
from shadowproxy.tasks import TaskSet
from tests.support import free_port, upstream, wait_listening, write_config
from tests.support import route as route_config
from tests.test_recording import make_pair, wait_until
from tests.test_recording_process import (
    config,
    losses_of_a_killed_writer_are_counted,
    parent_metrics,
    sample,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc, fork")


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.fixture
def forks() -> Iterator[ForkServer]:
    # Earlier tests leave idle threads in pytest's process (py4j's, a Spark session's),
    # blocked on sockets, holding none of the locks the server uses.
    server = ForkServer.start(refuse_threads=False)
    assert server is not None
    yield server
    if server.alive:  # the test failed before the recorder closed it
        os.kill(server.pid, signal.SIGKILL)
        os.waitpid(server.pid, 0)


async def test_a_killed_forked_writer_is_forked_again_and_nothing_is_lost(
    tmp_path: Path, forks: ForkServer
) -> None:
    registry, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, flush_interval_s=0.1), metrics, forks)
    await recorder.start()
    first = recorder._process
    assert first is not None
    assert parent_of(first.pid) == forks.pid
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, first.pid) == min(ours + WRITER_NICENESS, 19)
    for n in range(50):
        recorder.submit(make_pair(n))
    await wait_until(lambda: recorder.pending == 0, within_s=20)
    first.kill()
    assert await first.wait() == -signal.SIGKILL
    await wait_until(
        lambda: recorder._process not in (None, first) and recorder.health()["status"] == "ok",
        within_s=20,
    )
    second = recorder._process
    assert second is not None
    assert parent_of(second.pid) == forks.pid
    for n in range(50, 80):
        recorder.submit(make_pair(n))
    await recorder.close()
    ids = set(read_dataset(str(tmp_path)).column("request_id").to_pylist())
    assert ids == {f"req-{n}" for n in range(80)}
    assert sample(registry, "shadowproxy_records_dropped_total", reason="writer_died") == 0
    assert await second.wait() == 0
    assert gone(forks.pid)


async def test_what_a_forked_writer_dies_with_is_counted(tmp_path: Path, forks: ForkServer) -> None:
    await losses_of_a_killed_writer_are_counted(tmp_path, forks)


async def test_without_its_fork_server_the_recorder_spawns_writers(
    tmp_path: Path, forks: ForkServer
) -> None:
    _, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, flush_interval_s=0.1), metrics, forks)
    await recorder.start()
    first = recorder._process
    assert first is not None
    os.kill(forks.pid, signal.SIGKILL)
    await wait_until(lambda: not forks.alive, within_s=5)
    for n in range(20):
        recorder.submit(make_pair(n))
    await wait_until(lambda: recorder.pending == 0, within_s=20)
    first.kill()  # an orphan now: its exit code went with the server
    await wait_until(
        lambda: recorder._process not in (None, first) and recorder.health()["status"] == "ok",
        within_s=20,
    )
    second = recorder._process
    assert second is not None
    assert parent_of(second.pid) == os.getpid()  # a fresh interpreter, spawned
    for n in range(20, 30):
        recorder.submit(make_pair(n))
    await recorder.close()
    assert read_dataset(str(tmp_path)).num_rows == 30


async def test_a_fork_server_that_does_not_answer_is_given_up(
    tmp_path: Path, forks: ForkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forkserver, "FORK_TIMEOUT_S", 0.3)
    _, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, flush_interval_s=0.1), metrics, forks)
    os.kill(forks.pid, signal.SIGSTOP)
    try:
        await recorder.start()  # given up after 0.3 s: a spawned writer instead
        writer = recorder._process
        assert writer is not None
        assert parent_of(writer.pid) == os.getpid()
        assert not forks.alive
        for n in range(10):
            recorder.submit(make_pair(n))
    finally:
        os.kill(forks.pid, signal.SIGCONT)  # it reads the close, and exits
    await recorder.close()
    assert read_dataset(str(tmp_path)).num_rows == 10
    assert gone(forks.pid)


async def test_a_fork_request_cancelled_while_waiting_gives_the_server_up(
    forks: ForkServer,
) -> None:
    """The reply still due would be taken by the next request, with a writer whose
    input never closes: the server is given up instead."""
    os.kill(forks.pid, signal.SIGSTOP)
    try:
        request = TaskSet().spawn(forks.fork_writer(), name="fork-request")
        await asyncio.sleep(0.2)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert not forks.alive
        with pytest.raises(ConnectionError, match="fork server is gone"):
            await forks.fork_writer()
    finally:
        os.kill(forks.pid, signal.SIGCONT)  # it reads the close, and exits
    await forks.close()
    assert gone(forks.pid)


async def test_a_bad_recording_dir_fails_at_start_and_ends_the_fork_server(
    tmp_path: Path, forks: ForkServer
) -> None:
    _, metrics = parent_metrics()
    recorder = RecorderProcess(config(tmp_path, dir="nosuchscheme://bucket/x"), metrics, forks)
    with pytest.raises(ConfigError, match=r"recording\.dir"):
        await recorder.start()
    assert gone(forks.pid)


async def test_serve_forks_its_writer_and_sigterm_ends_all_three(tmp_path: Path) -> None:
    async with upstream() as production, upstream() as shadow:
        shadows = [{"name": "s", "url": shadow.url, "sample_rate": 1.0}]
        routes = [route_config("m", production.url, shadows)]
        port, admin = free_port(), free_port()
        path = write_config(
            tmp_path,
            routes,
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin}",
            recording={"dir": str(tmp_path / "rec"), "flush_interval_s": 0.2},
        )
        proxy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "serve", "--config", str(path),
        )  # fmt: skip
        try:
            await wait_listening(port)
            server = _children(proxy.pid)
            assert len(server) == 1
            await wait_until(lambda: len(_children(server[0])) == 1, within_s=20)
            writer = _children(server[0])[0]
            # Once started, the writer keeps none of the library pages only starting
            # needed; the proxy keeps its own (production's requests would refill them).
            await wait_until(lambda: code_kib(writer, "libarrow.so") < 2048, within_s=20)
            async with aiohttp.ClientSession() as client:
                for n in range(5):
                    headers = {"x-request-id": f"r{n}"}
                    async with client.post(
                        f"http://127.0.0.1:{port}/v1/models/m", data=b"{}", headers=headers
                    ) as answer:
                        assert answer.status == 200
            proxy.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proxy.wait(), 30) == 0
        finally:
            if proxy.returncode is None:
                proxy.kill()
                await proxy.wait()
    await wait_until(lambda: gone(writer) and gone(server[0]), within_s=5)
    assert read_dataset(str(tmp_path / "rec")).num_rows == 5


def code_kib(pid: int, library: str) -> int:
    """Resident KiB of a library's read-only mappings (its code and constants)."""
    mappings = parse_smaps(Path(f"/proc/{pid}/smaps").read_text())
    return sum(m.rss_kib for m in mappings if library in m.path and "w" not in m.perms)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_with_other_threads_running_no_fork_server_is_started(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    waiting = threading.Thread(target=release.wait)
    waiting.start()
    try:
        assert ForkServer.start() is None
    finally:
        release.set()
        waiting.join()
    assert "cannot fork writers here" in caplog.text
