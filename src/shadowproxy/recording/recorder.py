"""The recorder: the event loop appends, one writer thread does everything else.

Why drop instead of wait: production availability beats completeness of the log.
``submit`` runs on the event loop for every pair and only appends to a bounded
buffer (a ``deque`` plus a count); when ``max_pending_records`` are already held, or
the record would take the writer's memory past ``max_buffer_bytes``, the record is
dropped and counted (``shadowproxy_records_dropped_total{reason}``), so a slow disk or
an unreachable bucket can never slow a client request.

Thread hand-off without a lock on the hot path: ``deque.append``/``popleft`` are
atomic, ``submitted`` is written only by the event loop and ``Writer.finished`` only
by the writer thread, so ``pending = submitted - finished`` is never corrupted (a
stale read only makes the bound a little conservative). Bytes are counted the same
way: ``submitted_bytes`` by the event loop, ``taken_bytes`` and ``held_bytes`` by the
writer thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from shadowproxy.config import RecordingConfig, RouteConfig
from shadowproxy.errors import ConfigError
from shadowproxy.metrics import RecorderMetrics
from shadowproxy.recording.items import Feedback, Item, Routes, item_bytes
from shadowproxy.recording.spill import Spill
from shadowproxy.recording.storage import Storage
from shadowproxy.recording.writer import Comparer, Writer
from shadowproxy.records import Exposure, Observation, Pair, VerdictCounts

log = logging.getLogger(__name__)

IDLE_TICK_S = 0.1
"""How often the writer wakes on its own: to take what arrived, check file age and retry
backoff. Records wait at most this long in the buffer."""
WAKE_BATCH = 512
"""Records that wake the writer before its tick. Waking it for every record would make
the writer and the event loop trade the GIL thousands of times a second, which cost a
third of the proxy's throughput; in batches the writer runs a few times per tick."""
TAKE_MAX = 4096
"""Items taken from the buffer per writer cycle, so rotation is never starved."""


class Recorder:
    """Records every pair as one Parquet row under ``recording.dir``; a ``records.Sink``.

    Usage::

        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
        await recorder.start()
        recorder.submit(pair)                   # event loop, never blocks
        recorder.submit_exposure(exposure)      # likewise
        recorder.submit_feedback([(rid, label_json, ts)])
        await recorder.close()                  # writes everything still buffered

    ``comparer`` (optional) runs on the writer thread on the *redacted* pair; its
    result fills the comparison columns. ``clock`` (monotonic seconds) drives file
    age and retry backoff, injectable for tests.
    """

    def __init__(
        self,
        recording: RecordingConfig,
        routes: Sequence[RouteConfig],
        metrics: RecorderMetrics,
        comparer: Comparer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = recording
        self._metrics = metrics
        self._clock = clock
        self._storage = Storage(
            recording.dir, endpoint_url=recording.endpoint_url, region=recording.region
        )
        self._writer = Writer(self._storage, recording, routes, metrics, comparer, clock)
        self._queue: deque[Item] = deque()
        self._submitted = 0
        self._submitted_bytes = 0
        self._taken_bytes = 0
        self._max_pending = recording.max_pending_records
        self._max_bytes = recording.max_buffer_bytes
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._dropped = {
            reason: metrics.records_dropped.labels(reason)
            for reason in ("queue_full", "buffer_full", "write_failed", "shutdown")
        }

    @property
    def pending(self) -> int:
        """Records accepted but not yet in a complete file (or spilled)."""
        return self._submitted - self._writer.finished

    @property
    def held_bytes(self) -> int:
        """Estimated bytes of records in memory: queued, plus what the writer holds."""
        return self._submitted_bytes - self._taken_bytes + self._writer.held_bytes

    # --- event loop side: O(1), no parsing, no I/O --------------------------------

    def submit(self, pair: Pair) -> None:
        self._put(pair)

    def submit_exposure(self, exposure: Exposure) -> None:
        """Like ``submit``, for the exposures of experiment routes (same bound, same drops)."""
        self._put(exposure)

    def submit_telemetry(self, observation: Observation) -> None:
        """Like ``submit``, for watched requests no shadow took (same bound, same drops)."""
        self._put(observation)

    def _put(self, record: Pair | Exposure | Observation) -> None:
        if self._closing:
            self._dropped["shutdown"].inc()
            return
        size = item_bytes(record)
        full = None
        if self._submitted - self._writer.finished >= self._max_pending:
            full = "queue_full"
        elif self.held_bytes + size > self._max_bytes:
            full = "buffer_full"
        if full is not None:
            # While writes fail the buffer fills with unwritten rows: say so.
            self._dropped["write_failed" if self._writer.error else full].inc()
            return
        self._queue.append(record)
        self._submitted += 1
        self._submitted_bytes += size
        if len(self._queue) >= WAKE_BATCH and not self._wake.is_set():
            self._wake.set()

    def submit_feedback(self, items: Sequence[tuple[str, str, float]]) -> bool:
        """Queue (request_id, label JSON text, received ts) items, all or none.

        False when they do not fit (the caller answers 503 and the client retries), so
        refused feedback is not counted as dropped.
        """
        feedback = Feedback(tuple(items))
        size = item_bytes(feedback)
        if self._closing or self.pending + len(items) > self._max_pending:
            return False
        if self.held_bytes + size > self._max_bytes:
            return False
        if items:
            self._queue.append(feedback)
            self._submitted += len(items)
            self._submitted_bytes += size
            if not self._wake.is_set():
                self._wake.set()
        return True

    def update_routes(self, routes: Sequence[RouteConfig]) -> None:
        """A reload: pairs submitted from now on are recorded with these routes' settings
        (queued in order, so the pairs already waiting keep the old ones)."""
        self._queue.append(Routes(tuple(routes)))

    def verdict_counts(self) -> VerdictCounts:
        """(agreed, disagreed) comparisons per (route, shadow) since the start."""
        # One C-level copy under the GIL: the writer thread only ever replaces values.
        return dict(self._writer.verdicts)

    def health(self) -> dict[str, object]:
        error = self._writer.error
        if error is not None:
            return {"status": "degraded", "error": error, "pending": self.pending}
        return {"status": "ok", "pending": self.pending}

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Find the storage and start the writer thread.

        An unknown URI scheme is a config error; an unreachable store is not (the
        writer retries and ``health()`` says degraded), so a bucket outage cannot
        stop the proxy from starting.
        """
        if self._thread is not None:
            return
        try:
            await asyncio.to_thread(self._storage.resolve)
        except ValueError as exc:
            raise ConfigError(None, "recording.dir", str(exc)) from None
        except OSError as exc:
            log.warning(
                "recorder: %s is not reachable yet (%s); will retry", self._storage.root, exc
            )
        if self._settings.spill_dir is not None:
            await asyncio.to_thread(self._open_spill, self._settings.spill_dir)
        self._start_thread()

    def _open_spill(self, directory: str) -> None:
        spill = Spill(directory, self._settings.spill_max_bytes, self._storage.prefix)
        try:
            adopted = spill.open()
        except OSError as exc:
            raise ConfigError(
                None, "recording.spill_dir", f"cannot use {directory}: {exc}"
            ) from None
        if adopted:
            rows = sum(file.rows for file in adopted)
            log.warning(
                "recorder: %d spilled files (%d rows) of a writer that is gone will be uploaded",
                len(adopted),
                rows,
            )
        self._writer.use_spill(spill, adopted)

    async def close(self) -> None:
        """Write everything buffered and stop the writer (idempotent).

        Failing writes are retried for ``close_timeout_s``; what is still unwritten
        then is dropped and counted (reason ``shutdown``). The writer is a daemon
        thread, so a process that exits without ``close()`` does not hang, but loses
        what was buffered.
        """
        self._closing = True
        if self._thread is None:
            self._start_thread()
        assert self._thread is not None
        self._stopping.set()
        self._wake.set()
        await asyncio.to_thread(self._thread.join)
        self._writer.close_spill()
        self._metrics.recorder_pending.set(self.pending)

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadowproxy-recorder", daemon=True)
        self._thread.start()

    # --- writer thread --------------------------------------------------------------

    def _run(self) -> None:
        tick = min(IDLE_TICK_S, self._settings.flush_interval_s)
        deadline: float | None = None
        while True:
            self._wake.wait(tick)
            self._wake.clear()
            first_stop = deadline is None and self._stopping.is_set()
            if first_stop:
                deadline = self._clock() + self._settings.close_timeout_s
            try:
                self._cycle(stopping=deadline is not None, retry_now=first_stop)
            except Exception:
                log.exception("recorder: writer cycle failed; carrying on")
            self._metrics.recorder_pending.set(self.pending)
            if deadline is not None and not self._queue and self._finished(deadline):
                return

    def _cycle(self, *, stopping: bool, retry_now: bool) -> None:
        items: list[Item] = []
        while self._queue and len(items) < TAKE_MAX:
            items.append(self._queue.popleft())
        self._writer.take(items)
        self._taken_bytes += sum(item_bytes(item) for item in items if not isinstance(item, Routes))
        self._writer.rotate(everything=stopping)
        self._writer.write_due(retry_now=retry_now)
        if self._queue:
            self._wake.set()

    def _finished(self, deadline: float) -> bool:
        """At shutdown: done when all is written, or when retrying ran out of time."""
        if self._writer.idle:
            return True
        if self._clock() < deadline:
            return False
        spilled, dropped = self._writer.give_up("shutdown")
        where = f" ({spilled} spilled to {self._settings.spill_dir})" if spilled else ""
        log.error(
            "recorder: shutdown: %d records not written to %s%s, %d of them dropped: %s",
            spilled + dropped,
            self._storage.root,
            where,
            dropped,
            self._writer.error,
        )
        return True
