"""The writer process: runs the recorder (redact, compare, write Parquet) off the proxy.

Started by ``RecorderProcess`` as ``python -m shadowproxy.recording.child``. It reads
frames from stdin (``wire``), feeds them to a ``Recorder`` and every
``STATUS_INTERVAL_S`` writes a status frame to stdout: records finished, health, the
exposition of the recorder's metrics (only those: the proxy's own metrics are the
proxy's to export), what ``auto`` picked and the comparison verdicts so far. End of
stdin means "flush and exit": it ignores SIGINT and SIGTERM, so a Ctrl-C on the terminal
cannot cut the flush short; the proxy decides when recording ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

from prometheus_client import CollectorRegistry, generate_latest

from shadowproxy.compare import Comparer
from shadowproxy.config import Config
from shadowproxy.errors import ConfigError
from shadowproxy.metrics import RecorderMetrics
from shadowproxy.pages import unmap_clean_library_pages
from shadowproxy.recording import wire
from shadowproxy.tasks import TaskSet

if TYPE_CHECKING:
    from shadowproxy.recording.recorder import Recorder

log = logging.getLogger("shadowproxy.recording.child")

STATUS_INTERVAL_S = 0.5


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, Any] | None:
    try:
        head = await reader.readexactly(wire.HEADER.size)
    except asyncio.IncompleteReadError:
        return None
    size, kind = wire.HEADER.unpack(head)
    if size > wire.MAX_FRAME:
        raise ValueError(f"frame of {size} bytes announced: the stream is corrupt")
    return kind, pickle.loads(await reader.readexactly(size))


class Child:
    def __init__(self, config: Config, out: asyncio.StreamWriter) -> None:
        from shadowproxy.recording.recorder import Recorder  # Arrow: see main()

        self.registry = CollectorRegistry()
        self.comparer = Comparer(config.routes)
        self.recorder: Recorder = Recorder(
            config.main.recording, config.routes, RecorderMetrics(self.registry), self.comparer
        )
        self.received = 0
        self.out = out

    def status(self) -> dict[str, Any]:
        return {
            "finished": self.received - self.recorder.pending,
            "health": self.recorder.health(),
            "metrics": generate_latest(self.registry),
            "auto": self.comparer.auto_choices(),
            "verdicts": self.recorder.verdict_counts(),
        }

    async def report(self) -> None:
        self.out.write(wire.frame(wire.STATUS, self.status()))
        await self.out.drain()

    async def report_forever(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            await self.report()

    def take(self, kind: int, payload: Any) -> None:
        if kind == wire.PAIRS:
            for packed in payload:
                self.recorder.submit(wire.unpack(packed))
            self.received += len(payload)
        elif kind == wire.EXPOSURES:
            for packed in payload:
                self.recorder.submit_exposure(wire.unpack_exposure(packed))
            self.received += len(payload)
        elif kind == wire.TELEMETRY:
            for packed in payload:
                self.recorder.submit_telemetry(wire.unpack_observation(packed))
            self.received += len(payload)
        elif kind == wire.ROUTES:
            self.recorder.update_routes(payload)
        elif kind == wire.FEEDBACK:
            # The parent bounds what it accepts by the same limit; a refusal here can
            # only follow a parent bug, so it is logged rather than silently lost.
            if not self.recorder.submit_feedback(payload):
                log.error("writer: %d feedback items refused (buffer full)", len(payload))
            self.received += len(payload)


async def run(stdin: BinaryIO, stdout: BinaryIO) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=wire.MAX_FRAME)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, stdout)
    out = asyncio.StreamWriter(transport, protocol, None, loop)
    first = await read_frame(reader)
    if first is None or first[0] != wire.CONFIG:
        log.error("writer: no config frame; exiting")
        return 2
    child = Child(first[1], out)
    try:
        await child.recorder.start()
    except ConfigError as exc:
        out.write(wire.frame(wire.STATUS, {"fatal": str(exc)}))
        await out.drain()
        return 2
    await child.report()  # ready
    # Started: what Arrow and the S3 client touched to get here need not stay mapped.
    log.debug("writer: %d KiB of library pages unmapped", unmap_clean_library_pages())
    tasks = TaskSet()
    tasks.spawn(child.report_forever(), name="writer-status")
    try:
        while (item := await read_frame(reader)) is not None:
            child.take(*item)
    finally:
        await tasks.drain(0)
        await child.recorder.close()
        await child.report()
        transport.close()
    return 0


def lean_arrow() -> None:
    """Keep numpy out of the writer; before anything imports pyarrow.

    pyarrow imports numpy whenever it is installed, and the writer never hands Arrow
    data to numpy: refusing the import saves ~10 MiB in every sidecar. Measured with
    ``benchmarks/bench_sidecar_memory.py`` (with ``pyarrow.dataset`` left to readers,
    see ``storage._read``), the idle writer went from 90 to 59 MiB PSS. Arrow's
    system allocator instead of mimalloc was tried too: it held more under load.
    """
    sys.modules.setdefault("numpy", None)  # type: ignore[arg-type]


WRITER_NICENESS = 10
"""How far below the proxy the writer runs in CPU priority (``nice``)."""


def yield_cpu() -> None:
    """Let the proxy have the CPU first when both want it.

    The writer is batch work (about 0.2 ms of CPU per pair with a comparison, as much
    as the proxy's own Python per call), and with few cores it competed with the
    proxy, production and the client for the same ones, in production's latency. At a
    lower priority it uses what they leave; when that is not enough it falls behind,
    and the proxy's bound (``max_pending_records``) drops and counts what does not fit,
    the rule recording already follows: production's latency before the log.
    """
    if hasattr(os, "nice"):  # not on Windows
        os.nice(WRITER_NICENESS)


def prepare() -> None:
    """What a writer does before its first frame, forked or spawned."""
    lean_arrow()
    yield_cpu()
    import shadowproxy.recording.recorder  # noqa: F401  (Arrow)


def main() -> None:
    """A writer started as ``python -m shadowproxy.recording.child``: frames on stdio."""
    prepare()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(asyncio.run(run(sys.stdin.buffer, sys.stdout.buffer)))


def run_forked(stdin_fd: int, stdout_fd: int) -> int:
    """A writer forked by ``forkserver``: frames on these pipes, logs where the proxy's go.

    Its stdio stays the proxy's, so nothing printed by accident can corrupt a frame. It
    inherits the server's ignored signals and the proxy's logging; asyncio's own loop,
    as in a spawned writer (no loop exists in the server to inherit).
    """
    prepare()
    with open(stdin_fd, "rb", buffering=0) as stdin, open(stdout_fd, "wb", buffering=0) as out:
        code = asyncio.run(run(stdin, out))
    logging.shutdown()
    return code


if __name__ == "__main__":
    main()
