"""The writer thread's work: queued pairs in, complete Parquet files out.

Everything here runs on the one writer thread, never on the event loop: decoding,
redaction, comparison, row and Arrow batch building, zstd encoding and file I/O. Per item::

    Pair ─► decode ─► redact bodies ─► comparer(redacted pair) ─► pair_row ─► part file of
            (gzip,    (route policy)   (errors become the row's      (capped     (route, date)
             br, …)                     compare_detail)               bodies)

Feedback and exposures are neither redacted nor compared: their rows go straight to
part files of ``feedback/`` and ``exposures/``.

On a route with a ``monitor:`` block, each pair's request and answers are also checked
against its invariants (``recording.monitoring``, before redaction: the rules are about
what the model saw and said), and the violations go on the row. A watched request no
shadow took arrives as an ``Observation`` and becomes a row of ``telemetry/``.

A pair marked ``corrupt_prediction`` by a chaos rule has its shadow answer corrupted
first (``compare.corrupt``), so everything after it sees the corrupted answer.

A part file is one future file: its rows are encoded to Parquet in memory a row
group at a time as they arrive; it is sealed when it reaches ``max_rows_per_file``,
when ``flush_interval_s`` has passed since its first row, under memory pressure or
at shutdown, and its finished bytes are then written whole, under a name chosen at
sealing, so a retry can never make a second copy. A failed write keeps the file and is
retried with exponential backoff; meanwhile the recorder reports itself degraded and,
with a spill directory, moves the waiting files to local disk (``spill``). Rows leave
memory only when their file is complete, spilled or dropped, and are counted each way.

``held_bytes`` is what the writer holds in memory (open files and sealed files not
spilled); the recorder adds what is queued and refuses records beyond
``max_buffer_bytes``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import pyarrow as pa

from shadowproxy.config import RecordingConfig, RouteConfig
from shadowproxy.experiments.chaos import corrupts
from shadowproxy.metrics import RecorderMetrics
from shadowproxy.recording.comparison_check import comparison_problem
from shadowproxy.recording.decoding import Memo as DecodeMemo
from shadowproxy.recording.decoding import decode_observation, decode_pair
from shadowproxy.recording.items import Feedback, Item, Routes
from shadowproxy.recording.monitoring import (
    RouteWatch,
    prediction_text,
    route_watches,
    watched_cells,
)
from shadowproxy.recording.parts import PartFile, Sealed
from shadowproxy.recording.policy import UNKNOWN_ROUTE, RoutePolicy, route_policies
from shadowproxy.recording.redact import Memo
from shadowproxy.recording.schema import (
    Withheld,
    exposure_row,
    feedback_row,
    pair_row,
    telemetry_row,
    utc_date,
)
from shadowproxy.recording.spill import Spill, Spilled
from shadowproxy.recording.storage import (
    EXPOSURES,
    FEEDBACK,
    PAIRS,
    ROW_GROUP_BYTES,
    TELEMETRY,
    Storage,
    exposures_directory,
    feedback_directory,
    pairs_directory,
    telemetry_directory,
)
from shadowproxy.records import Comparison, Exposure, Observation, Pair

log = logging.getLogger(__name__)


Comparer = Callable[[Pair], Comparison]


@runtime_checkable
class RouteComparer(Protocol):
    """A comparer that compares each route its own way (``compare.Comparer``)."""

    def __call__(self, pair: Pair) -> Comparison: ...

    def update_routes(self, routes: Sequence[RouteConfig]) -> None: ...


RETRY_INITIAL_S = 0.5


RETRY_MAX_S = 30.0


LOG_EVERY_S = 10.0
"""A failure repeated per pair (a comparator bug) is logged at most this often."""


class Writer:
    """The writer thread's state. Only that thread calls its methods.

    ``finished`` counts records that left memory (written, spilled or dropped) and
    ``held_bytes`` what it holds; the recorder reads both from the event loop, which is
    safe because only this thread ever writes them (a stale read errs by one cycle).
    """

    def __init__(
        self,
        storage: Storage,
        recording: RecordingConfig,
        routes: Iterable[RouteConfig],
        metrics: RecorderMetrics,
        comparer: Comparer | None,
        clock: Callable[[], float],
    ) -> None:
        self.finished = 0
        self.held_bytes = 0
        self.spilled_rows = 0
        """Rows of this writer's own files that wait on the spill disk. They have left
        memory, so they count as finished: only the spill's size bounds them."""
        self.error: str | None = None
        self.verdicts: dict[tuple[str, str], tuple[int, int]] = {}
        """(agreed, disagreed) per (route, shadow) so far. Each update replaces a tuple,
        so a copy taken from another thread is consistent."""
        self._storage = storage
        self._settings = recording
        routes = tuple(routes)
        self._policies = route_policies(routes)
        self._metrics = metrics
        self._watches = route_watches(routes, metrics)
        self._comparer = comparer
        self._clock = clock
        self._open: dict[str, PartFile] = {}
        self._sealed: deque[Sealed] = deque()
        self._sealed_bytes = 0
        self._group_bytes = min(ROW_GROUP_BYTES, recording.max_buffer_bytes // 8)
        """Rows wait unencoded up to this; encoded, zstd keeps a long-open file small."""
        self._spill: Spill | None = None
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._last_log: dict[str, float] = {}

    # --- rows in ---------------------------------------------------------------

    def take(self, items: Sequence[Item]) -> None:
        now = self._clock()
        memo: Memo = {}
        decoded: DecodeMemo = {}
        for item in items:
            if isinstance(item, Exposure):
                self._add_exposure(item, now)
            elif isinstance(item, Observation):
                self._add_observation(item, now)
            elif isinstance(item, Feedback):
                for request_id, label, ts in item.items:
                    self._add_feedback(request_id, label, ts, now)
            elif isinstance(item, Routes):
                self._use_routes(item.routes)
                memo, decoded = {}, {}  # bodies redacted under the old rules are not reused
            else:
                self._add_pair(item, now, memo, decoded)

    def _use_routes(self, routes: tuple[RouteConfig, ...]) -> None:
        self._policies = route_policies(routes)
        self._watches = route_watches(routes, self._metrics, self._watches)
        if isinstance(self._comparer, RouteComparer):
            self._comparer.update_routes(routes)

    def _add_pair(self, pair: Pair, now: float, memo: Memo, decoded: DecodeMemo) -> None:
        try:
            row = self._pair_row(pair, memo, decoded)
            directory = pairs_directory(pair.request.route, utc_date(pair.request.ts))
        except Exception:
            self._unbuildable(PAIRS)
            return
        self._add(PAIRS, directory, row, now)

    def _add_observation(self, observation: Observation, now: float) -> None:
        request = observation.request
        watch = self._watches.get(request.route)
        if watch is None:
            return  # the route lost its monitor in a reload: nothing to watch it by
        limit = self._policies.get(request.route, UNKNOWN_ROUTE).max_decoded_bytes
        if limit is not None:
            # Decoded first, as pairs are: the monitor reads what the model saw and said.
            observation, failures = decode_observation(observation, limit)
            for body, failure in failures:
                self._metrics.body_decode_failures.labels(request.route, body, failure).inc()
        try:
            row = self._telemetry_row(observation, watch)
            directory = telemetry_directory(request.route, utc_date(request.ts))
        except Exception:
            self._unbuildable(TELEMETRY)
            return
        self._add(TELEMETRY, directory, row, now)

    def _telemetry_row(self, observation: Observation, watch: RouteWatch) -> dict[str, object]:
        request_violations = watch.request(observation.request, count=True)
        answer = watch.production(observation.production, count=True)
        policy = self._policies.get(observation.request.route, UNKNOWN_ROUTE)
        withheld = Withheld()
        if policy.bodies and policy.redactor.active:
            request_body = policy.redactor.body(observation.request.body)
            prod_body = policy.redactor.body(observation.production.body)
            withheld = Withheld(request=request_body is None, production=prod_body is None)
            observation = Observation(
                replace(observation.request, body=request_body or b""),
                replace(observation.production, body=prod_body or b""),
            )
        return telemetry_row(
            observation,
            prediction_text(answer.prediction),
            answer.violations,
            request_violations,
            answer.model_version,
            bodies=policy.bodies,
            max_body_bytes=policy.max_body_bytes,
            withheld=withheld,
        )

    def _add_feedback(self, request_id: str, label: str, ts: float, now: float) -> None:
        try:
            row = feedback_row(request_id, label, ts)
            directory = feedback_directory(utc_date(ts))
        except Exception:
            self._unbuildable(FEEDBACK)
            return
        self._add(FEEDBACK, directory, row, now)

    def _add_exposure(self, exposure: Exposure, now: float) -> None:
        try:
            row = exposure_row(exposure)
            directory = exposures_directory(exposure.route, utc_date(exposure.ts))
        except Exception:
            self._unbuildable(EXPOSURES)
            return
        self._add(EXPOSURES, directory, row, now)

    def _unbuildable(self, kind: str) -> None:
        # A bug in row building loses this one record, counted, not the thread.
        self._log_throttled(kind, "recorder: could not build a %s row", kind, exc_info=True)
        self._drop("write_failed", 1)

    def _add(self, kind: str, directory: str, row: dict[str, object], now: float) -> None:
        part = self._open.get(directory)
        if part is None:
            part = PartFile(kind, directory, now, self._group_bytes)
            self._open[directory] = part
        try:
            part.add(row)
        except Exception:
            self._broken(directory, part)
            return
        self._drop("write_failed", part.take_rejected())
        if part.rows >= self._settings.max_rows_per_file:
            self._seal(directory)

    def _broken(self, directory: str, part: PartFile) -> None:
        """Encoding failed (a bug, or memory exhausted): the file's rows are lost, counted."""
        log.exception("recorder: could not encode %s; dropping its %d rows", directory, part.rows)
        self._open.pop(directory, None)
        self._drop("write_failed", part.rows + part.take_rejected())

    def _pair_row(self, pair: Pair, memo: Memo, decoded: DecodeMemo) -> dict[str, object]:
        policy = self._policies.get(pair.request.route, UNKNOWN_ROUTE)
        watch = self._watches.get(pair.request.route) if pair.watched else None
        # Without bodies to record or a comparer, only the monitor reads the bodies.
        compared = policy.bodies or self._comparer is not None
        if compared or watch is not None:
            if policy.max_decoded_bytes is not None:
                pair = self._decode(pair, policy.max_decoded_bytes, decoded)
            if pair.result.chaos and pair.result.body and corrupts(pair.result.chaos):
                pair = policy.corrupt(pair)
        if compared:
            row = self._compared_row(pair, policy, memo)
        else:
            # Nothing will read a body: skip the parsing redaction would cost.
            row = pair_row(pair, None, bodies=False, max_body_bytes=0)
        if watch is not None:
            # The monitor reads what the comparison reads: decoded, chaos applied, before
            # redaction (the rules are about what the model saw and said).
            row.update(watched_cells(watch, pair))
        return row

    def _compared_row(self, pair: Pair, policy: RoutePolicy, memo: Memo) -> dict[str, object]:
        """``pair`` already decoded and corrupted: redact, compare, build the row."""
        redacted, withheld = policy.redactor.pair(pair, memo)
        comparison, failure = self._compare(redacted)
        return pair_row(
            redacted,
            comparison,
            bodies=policy.bodies,
            max_body_bytes=policy.max_body_bytes,
            withheld=withheld,
            compare_detail=failure,
        )

    def _decode(self, pair: Pair, limit: int, memo: DecodeMemo) -> Pair:
        """The pair with its compressed bodies decoded; those that cannot be are counted
        (once per recorded row) and make the pair incomparable."""
        decoded, failures = decode_pair(pair, limit, memo)
        for body, failure in failures:
            self._metrics.body_decode_failures.labels(pair.request.route, body, failure).inc()
        return decoded

    def _compare(self, pair: Pair) -> tuple[Comparison | None, str | None]:
        """The comparison of a redacted pair, or (None, why it failed)."""
        if self._comparer is None:
            return None, None
        comparison: Comparison | None
        failure: str | None
        try:
            comparison = self._comparer(pair)
        except Exception as exc:
            self._log_throttled("compare", "recorder: the comparator failed", exc_info=True)
            comparison, failure = None, f"comparator error: {type(exc).__name__}: {exc}"
        else:
            problem = comparison_problem(comparison)
            failure = None if problem is None else f"comparator error: {problem}"
            if failure is not None:
                self._log_throttled("compare", "recorder: %s", failure)
                comparison = None
        self._count_comparison(pair, comparison)
        return comparison, failure

    def _count_comparison(self, pair: Pair, comparison: Comparison | None) -> None:
        route, shadow = pair.request.route, pair.shadow
        agree = comparison.agree if comparison else None
        result = "incomparable" if agree is None else "agree" if agree else "disagree"
        self._metrics.comparisons.labels(route, shadow, result).inc()
        if agree is not None:
            agreed, disagreed = self.verdicts.get((route, shadow), (0, 0))
            self.verdicts[route, shadow] = (agreed + agree, disagreed + (not agree))
        score = comparison.diff_score if comparison else None
        if score is not None and math.isfinite(score):
            self._metrics.diff_score.labels(route, shadow).observe(score)

    # --- files out -------------------------------------------------------------

    def use_spill(self, spill: Spill, adopted: Sequence[Spilled]) -> None:
        """Spill refused files to ``spill``; upload ``adopted`` (another writer's) first."""
        self._spill = spill
        for file in adopted:
            kind = file.directory.split("/", 1)[0]
            self._sealed.append(
                Sealed(kind, file.directory, file.name, file.rows, None, file, adopted=True)
            )

    def rotate(self, *, everything: bool = False) -> None:
        """Seal part files that are old enough, or all of them.

        Memory pressure seals everything too: rows held for files count against
        ``max_pending_records`` and their bytes against ``max_buffer_bytes``, and
        waiting for a timer while new records are being refused would turn a bound
        into a loss (and only sealed files can be spilled).
        """
        now = self._clock()
        held = sum(part.rows for part in self._open.values())
        open_bytes = sum(part.memory_bytes for part in self._open.values())
        everything = (
            everything
            or held >= self._settings.max_pending_records // 2
            or open_bytes >= self._settings.max_buffer_bytes // 2
        )
        for directory, part in list(self._open.items()):
            if everything or now - part.opened_at >= self._settings.flush_interval_s:
                self._seal(directory)
        self._account()

    def _seal(self, directory: str) -> None:
        part = self._open[directory]
        try:
            data = part.seal()
        except Exception:
            self._broken(directory, part)
            return
        self._drop("write_failed", part.take_rejected())
        del self._open[directory]
        if part.rows:
            name = self._storage.new_name()
            self._sealed.append(Sealed(part.kind, directory, name, part.rows, data))
            self._sealed_bytes += data.size

    def write_due(self, *, retry_now: bool = False) -> None:
        """Write sealed files in order; on the first failure, back off and keep them
        (spilled when a spill directory has room)."""
        if retry_now:
            self._retry_at = 0.0
        if self._clock() < self._retry_at:
            return
        while self._sealed:
            file = self._sealed[0]
            if not self._readable(file):
                continue
            try:
                self._write(file)
            except Exception as exc:
                self._failed(exc)
                self.spill()
                return
            self._sealed.popleft()
            self._written(file)
            # Hand the file's freed buffers back to the OS now, not when the allocator
            # gets round to it: between files the writer should hold next to nothing.
            pa.default_memory_pool().release_unused()
        self._recovered()
        self._account()

    def _readable(self, file: Sealed) -> bool:
        """A spilled file that can no longer be read (deleted, disk gone) is lost,
        counted, and must not block the files behind it; True for every other file."""
        if file.spilled is None:
            return True
        assert self._spill is not None
        try:
            file.data = pa.py_buffer(self._spill.read(file.spilled))
        except OSError as exc:
            log.error("recorder: spilled file %s is lost: %s", file.spilled.path, exc)
            self._sealed.popleft()
            self._spill.forget(file.spilled)
            if not file.adopted:
                self.spilled_rows -= file.rows
            # Already counted as finished when spilled: only the loss is new.
            self._metrics.records_dropped.labels("write_failed").inc(file.rows)
            return False
        return True

    def _write(self, file: Sealed) -> None:
        assert file.data is not None
        try:
            self._storage.write(file.directory, file.data, file.name)
        finally:
            if file.spilled is not None:
                file.data = None  # read again at the next attempt, not held meanwhile

    def _written(self, file: Sealed) -> None:
        self._sealed_bytes -= file.memory_bytes
        if file.spilled is not None:
            assert self._spill is not None
            self._spill.remove(file.spilled)
            if not file.adopted:
                self.spilled_rows -= file.rows
        elif not file.adopted:
            self.finished += file.rows
        self._metrics.records_written.labels(file.kind).inc(file.rows)

    def spill(self) -> int:
        """Move sealed files from memory to the spill disk while it has room; rows moved."""
        moved = 0
        if self._spill is None:
            return moved
        for file in self._sealed:
            if file.data is None:
                continue
            try:
                spilled = self._spill.put(
                    file.directory, file.name, memoryview(file.data), file.rows
                )
            except OSError as exc:
                self._log_throttled(
                    "spill", "recorder: cannot spill to %s: %s", self._spill.root, exc
                )
                break
            if spilled is None:
                break  # full: what is left stays in memory
            self._sealed_bytes -= file.memory_bytes
            file.data, file.spilled = None, spilled
            self.spilled_rows += file.rows
            self.finished += file.rows
            moved += file.rows
        self._account()
        return moved

    def _account(self) -> None:
        self.held_bytes = self._sealed_bytes + sum(p.memory_bytes for p in self._open.values())

    def _failed(self, exc: Exception) -> None:
        self._backoff_s = min(RETRY_MAX_S, max(RETRY_INITIAL_S, self._backoff_s * 2))
        self._retry_at = self._clock() + self._backoff_s
        self._metrics.recorder_write_errors.inc()
        self._metrics.recorder_degraded.set(1)
        self.error = f"cannot write to {self._storage.root}: {type(exc).__name__}: {exc}"
        log.error("recorder: %s (retrying in %.1fs)", self.error, self._backoff_s)

    def _recovered(self) -> None:
        if self.error is not None:
            log.warning("recorder: writing to %s works again", self._storage.root)
        self.error = None
        self._backoff_s = 0.0
        self._metrics.recorder_degraded.set(0)

    @property
    def idle(self) -> bool:
        """Nothing left to write."""
        return not self._open and not self._sealed

    def give_up(self, reason: str) -> tuple[int, int]:
        """Shutdown gave up on the store: spill what fits, drop the rest (counted under
        ``reason``). Returns (rows spilled, rows dropped); spilled rows are uploaded by
        the next writer that opens the same spill directory."""
        for directory in list(self._open):
            self._seal(directory)
        self.spill()
        spilled = self.spilled_rows
        dropped = sum(p.rows for p in self._open.values())
        dropped += sum(f.rows for f in self._sealed if f.spilled is None and not f.adopted)
        self._open.clear()
        self._sealed.clear()
        self._sealed_bytes = 0
        self.spilled_rows = 0
        self._drop(reason, dropped)
        self._account()
        return spilled, dropped

    def close_spill(self) -> None:
        if self._spill is not None:
            self._spill.close()

    def _drop(self, reason: str, count: int) -> None:
        if count:
            self.finished += count
            self._metrics.records_dropped.labels(reason).inc(count)

    def _log_throttled(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock()
        if now - self._last_log.get(key, -math.inf) >= LOG_EVERY_S:
            self._last_log[key] = now
            log.error(message, *args, exc_info=exc_info)
