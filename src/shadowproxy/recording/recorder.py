"""The recorder: the event loop appends, one writer thread does everything else.

Why drop instead of wait: production availability beats completeness of the log.
``submit`` runs on the event loop for every pair and only appends to a bounded
buffer (a ``deque`` plus a count); when ``max_pending_records`` are already held the
record is dropped and counted (``shadowproxy_records_dropped_total{reason}``), so a
slow disk or an unreachable bucket can never slow a client request.

Thread hand-off without a lock on the hot path: ``deque.append``/``popleft`` are
atomic, ``submitted`` is written only by the event loop and ``Writer.finished`` only
by the writer thread, so ``pending = submitted - finished`` is never corrupted (a
stale read only makes the bound a little conservative).
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
from shadowproxy.recording.storage import Storage
from shadowproxy.recording.writer import Comparer, Feedback, Item, Routes, Writer
from shadowproxy.records import Exposure, Pair, VerdictCounts

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
        self._storage = Storage(recording.dir)
        self._writer = Writer(self._storage, recording, routes, metrics, comparer, clock)
        self._queue: deque[Item] = deque()
        self._submitted = 0
        self._max_pending = recording.max_pending_records
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._dropped = {
            reason: metrics.records_dropped.labels(reason)
            for reason in ("queue_full", "write_failed", "shutdown")
        }

    @property
    def pending(self) -> int:
        """Records accepted but not yet in a complete file."""
        return self._submitted - self._writer.finished

    # --- event loop side: O(1), no parsing, no I/O --------------------------------

    def submit(self, pair: Pair) -> None:
        self._put(pair)

    def submit_exposure(self, exposure: Exposure) -> None:
        """Like ``submit``, for the exposures of experiment routes (same bound, same drops)."""
        self._put(exposure)

    def _put(self, record: Pair | Exposure) -> None:
        if self._closing:
            self._dropped["shutdown"].inc()
            return
        if self._submitted - self._writer.finished >= self._max_pending:
            # While writes fail the buffer fills with unwritten rows: say so.
            self._dropped["write_failed" if self._writer.error else "queue_full"].inc()
            return
        self._queue.append(record)
        self._submitted += 1
        if len(self._queue) >= WAKE_BATCH and not self._wake.is_set():
            self._wake.set()

    def submit_feedback(self, items: Sequence[tuple[str, str, float]]) -> bool:
        """Queue (request_id, label JSON text, received ts) items, all or none.

        False when they do not fit (the caller answers 503 and the client retries), so
        refused feedback is not counted as dropped.
        """
        if self._closing or self.pending + len(items) > self._max_pending:
            return False
        if items:
            self._queue.append(Feedback(tuple(items)))
            self._submitted += len(items)
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
        self._start_thread()

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
        lost = self._writer.abandon("shutdown")
        log.error(
            "recorder: shutdown gave up on %d unwritten records: %s", lost, self._writer.error
        )
        return True
