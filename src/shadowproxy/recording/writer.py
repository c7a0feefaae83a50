"""The writer thread's work: queued pairs in, complete Parquet files out.

Everything here runs on the one writer thread, never on the event loop: decoding,
redaction, comparison, row and Arrow batch building, zstd encoding and file I/O. Per item::

    Pair ─► decode ─► redact bodies ─► comparer(redacted pair) ─► pair_row ─► part file of
            (gzip,    (route policy)   (errors become the row's      (capped     (route, date)
             br, …)                     compare_detail)               bodies)

Feedback and exposures are neither redacted nor compared: their rows go straight to
part files of ``feedback/`` and ``exposures/``.

A pair marked ``corrupt_prediction`` by a chaos rule has its shadow answer corrupted
first (``compare.corrupt``), so everything after it sees the corrupted answer.

A part file is one future file: its rows are encoded to Parquet in memory a row
group at a time as they arrive; it is sealed when it reaches ``max_rows_per_file``,
when ``flush_interval_s`` has passed since its first row, under memory pressure or
at shutdown, and its finished bytes are then written whole. A failed write keeps the
rows and is retried with exponential backoff; meanwhile the recorder reports itself
degraded. Rows leave memory only when their file is complete or when they are
dropped, and either way they are counted.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import pyarrow as pa

from shadowproxy.compare.corrupt import corrupt_answer
from shadowproxy.compare.spec import CompareConfig
from shadowproxy.config import RecordingConfig, RouteConfig
from shadowproxy.experiments.chaos import corrupts
from shadowproxy.metrics import RecorderMetrics
from shadowproxy.recording.decoding import Memo as DecodeMemo
from shadowproxy.recording.decoding import decode_pair
from shadowproxy.recording.redact import Memo, Redactor
from shadowproxy.recording.schema import (
    exposure_row,
    feedback_row,
    pair_row,
    row_bytes,
    to_record_batch,
    utc_date,
)
from shadowproxy.recording.storage import (
    EXPOSURES,
    FEEDBACK,
    PAIRS,
    ROW_GROUP_BYTES,
    ROW_GROUP_ROWS,
    SCHEMAS,
    Encoder,
    Storage,
    exposures_directory,
    feedback_directory,
    pairs_directory,
)
from shadowproxy.records import Comparison, Exposure, Pair

log = logging.getLogger(__name__)

Comparer = Callable[[Pair], Comparison]


@runtime_checkable
class RouteComparer(Protocol):
    """A comparer that compares each route its own way (``compare.Comparer``)."""

    def __call__(self, pair: Pair) -> Comparison: ...

    def update_routes(self, routes: Sequence[RouteConfig]) -> None: ...


BATCH_ROWS = 256
BATCH_BYTES = 2 * 1024 * 1024
"""Rows become Arrow batches this many (or this many bytes) at a time. Converting
Python objects to Arrow holds the GIL throughout, so a batch is also the longest the
event loop can be kept waiting by this thread; small batches keep that to a few ms
(row groups are sized separately, at write time)."""

_ARROW_REFUSALS = (pa.ArrowException, TypeError, ValueError, OverflowError)

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0
LOG_EVERY_S = 10.0
"""A failure repeated per pair (a comparator bug) is logged at most this often."""


@dataclass(frozen=True, slots=True)
class Feedback:
    """One ``submit_feedback`` call: (request_id, label JSON text, received ts) items."""

    items: Sequence[tuple[str, str, float]]


@dataclass(frozen=True, slots=True)
class Routes:
    """A reload's routes: the pairs queued after it are redacted and compared by these."""

    routes: tuple[RouteConfig, ...]


Item = Pair | Exposure | Feedback | Routes


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """A route's ``record`` options, compiled for the writer, and what it compares
    (which part of an answer a chaos corruption must change)."""

    bodies: bool
    max_body_bytes: int
    redactor: Redactor
    compare: CompareConfig
    max_decoded_bytes: int | None
    """Bound on each decoded body; None: compressed bodies are not decoded."""

    @classmethod
    def from_config(cls, route: RouteConfig) -> RoutePolicy:
        record = route.record
        return cls(
            record.bodies,
            record.max_body_bytes,
            Redactor(record.redact),
            route.compare,
            route.max_decoded_bytes,
        )

    def corrupt(self, pair: Pair) -> Pair:
        """The pair with the shadow's answer corrupted (a chaos ``corrupt_prediction``)."""
        result = pair.result
        body = corrupt_answer(result.body, result.content_type, self.compare)
        return replace(pair, result=replace(result, body=body))


def _route_policies(routes: Iterable[RouteConfig]) -> dict[str, RoutePolicy]:
    return {route.name: RoutePolicy.from_config(route) for route in routes}


UNKNOWN_ROUTE = RoutePolicy(
    bodies=False,
    max_body_bytes=0,
    redactor=Redactor(withhold_all=True),
    compare=CompareConfig(),
    max_decoded_bytes=None,
)
"""A pair from a route the recorder was not configured with: it cannot know what to
redact, so it keeps metadata only and the comparator sees no bodies (none is decoded)."""


class PartFile:
    """One future file: rows -> Arrow batches -> row groups encoded in memory.

    Until sealed it holds at most one unencoded row group; once sealed it holds the
    finished file's bytes, kept until a write succeeds.
    """

    def __init__(self, kind: str, directory: str, opened_at: float) -> None:
        self.kind = kind
        self.directory = directory
        self.opened_at = opened_at
        self.schema = SCHEMAS[kind]
        self.rows = 0
        self.rejected = 0
        """Rows Arrow refused (see ``_build``), not yet counted as dropped."""
        self.data: pa.Buffer | None = None
        self._encoder = Encoder(self.schema)
        self._pending: list[dict[str, object]] = []
        self._pending_bytes = 0
        self._group: list[pa.RecordBatch] = []
        self._group_bytes = 0

    def add(self, row: dict[str, object]) -> None:
        self._pending.append(row)
        self._pending_bytes += row_bytes(row)
        self.rows += 1
        if len(self._pending) < BATCH_ROWS and self._pending_bytes < BATCH_BYTES:
            return
        self._build()
        group_rows = sum(batch.num_rows for batch in self._group)
        if group_rows >= ROW_GROUP_ROWS or self._group_bytes >= ROW_GROUP_BYTES:
            self._encode_group()

    def seal(self) -> None:
        """Encode what is left and finish the file's bytes."""
        if self._pending:
            self._build()
        self._encode_group()
        self.data = self._encoder.finish()

    def take_rejected(self) -> int:
        rejected, self.rejected = self.rejected, 0
        return rejected

    def _encode_group(self) -> None:
        if self._group:
            self._encoder.write(pa.Table.from_batches(self._group, schema=self.schema))
        self._group, self._group_bytes = [], 0

    def _build(self) -> None:
        """Rows -> one batch. A row Arrow rejects (a bug upstream: say a lone surrogate
        in a string) must not take its neighbours down: retry row by row, reject it."""
        rows, self._pending = self._pending, []
        self._group_bytes += self._pending_bytes
        self._pending_bytes = 0
        try:
            self._group.append(to_record_batch(rows, self.schema))
            return
        except _ARROW_REFUSALS:
            pass
        for row in rows:
            try:
                self._group.append(to_record_batch([row], self.schema))
            except _ARROW_REFUSALS as exc:
                log.error("recorder: dropped a %s row Arrow refuses: %s", self.kind, exc)
                self.rows -= 1
                self.rejected += 1


class Writer:
    """The writer thread's state. Only that thread calls its methods.

    ``finished`` counts records that left memory (written or dropped); the recorder
    reads it from the event loop to know how many are pending, which is safe because
    only this thread ever writes it.
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
        self.error: str | None = None
        self.verdicts: dict[tuple[str, str], tuple[int, int]] = {}
        """(agreed, disagreed) per (route, shadow) so far. Each update replaces a tuple,
        so a copy taken from another thread is consistent."""
        self._storage = storage
        self._settings = recording
        self._policies = _route_policies(routes)
        self._metrics = metrics
        self._comparer = comparer
        self._clock = clock
        self._open: dict[str, PartFile] = {}
        self._sealed: deque[PartFile] = deque()
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
            elif isinstance(item, Feedback):
                for request_id, label, ts in item.items:
                    self._add_feedback(request_id, label, ts, now)
            elif isinstance(item, Routes):
                self._use_routes(item.routes)
                memo, decoded = {}, {}  # bodies redacted under the old rules are not reused
            else:
                self._add_pair(item, now, memo, decoded)

    def _use_routes(self, routes: tuple[RouteConfig, ...]) -> None:
        self._policies = _route_policies(routes)
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
            part = self._open[directory] = PartFile(kind, directory, now)
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
        if not policy.bodies and self._comparer is None:
            # Nothing will read a body: skip the parsing redaction would cost.
            return pair_row(pair, None, bodies=False, max_body_bytes=0)
        if policy.max_decoded_bytes is not None:
            pair = self._decode(pair, policy.max_decoded_bytes, decoded)
        if pair.result.chaos and pair.result.body and corrupts(pair.result.chaos):
            pair = policy.corrupt(pair)
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

    def rotate(self, *, everything: bool = False) -> None:
        """Seal part files that are old enough, or all of them.

        Memory pressure seals everything too: rows held for files count against
        ``max_pending_records``, and waiting for a timer while new records are being
        refused would turn a bound into a loss.
        """
        now = self._clock()
        held = sum(part.rows for part in self._open.values())
        everything = everything or held >= self._settings.max_pending_records // 2
        for directory, part in list(self._open.items()):
            if everything or now - part.opened_at >= self._settings.flush_interval_s:
                self._seal(directory)

    def _seal(self, directory: str) -> None:
        part = self._open[directory]
        try:
            part.seal()
        except Exception:
            self._broken(directory, part)
            return
        self._drop("write_failed", part.take_rejected())
        del self._open[directory]
        if part.rows:
            self._sealed.append(part)

    def write_due(self, *, retry_now: bool = False) -> None:
        """Write sealed files in order; on the first failure, back off and keep them."""
        if retry_now:
            self._retry_at = 0.0
        if self._clock() < self._retry_at:
            return
        while self._sealed:
            part = self._sealed[0]
            assert part.data is not None  # sealed
            try:
                self._storage.write(part.directory, part.data)
            except Exception as exc:
                self._failed(exc)
                return
            self._sealed.popleft()
            self.finished += part.rows
            self._metrics.records_written.labels(part.kind).inc(part.rows)
        self._recovered()

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
        """Nothing held in memory."""
        return not self._open and not self._sealed

    def abandon(self, reason: str) -> int:
        """Drop everything still held (shutdown gave up); returns how many rows."""
        rows = sum(part.rows for part in (*self._open.values(), *self._sealed))
        self._open.clear()
        self._sealed.clear()
        self._drop(reason, rows)
        return rows

    def _drop(self, reason: str, count: int) -> None:
        if count:
            self.finished += count
            self._metrics.records_dropped.labels(reason).inc(count)

    def _log_throttled(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock()
        if now - self._last_log.get(key, -math.inf) >= LOG_EVERY_S:
            self._last_log[key] = now
            log.error(message, *args, exc_info=exc_info)


_OPTIONAL_TEXT = ("prod_prediction", "shadow_prediction", "detail")
_INT32 = range(-(2**31), 2**31)


def comparison_problem(comparison: object) -> str | None:
    """Why a comparer's answer cannot be recorded, or None when it can.

    The comparer is someone else's code called per pair: a wrong type must become a
    ``comparator error`` on one row, not a batch Arrow rejects.
    """
    if not isinstance(comparison, Comparison):
        return f"returned {type(comparison).__name__}, not a Comparison"
    c = comparison
    if not isinstance(c.comparator, str):
        return f"comparator is {type(c.comparator).__name__}, not str"
    for name in _OPTIONAL_TEXT:
        value = getattr(c, name)
        if value is not None and not isinstance(value, str):
            return f"{name} is {type(value).__name__}, not str"
    if c.agree is not None and not isinstance(c.agree, bool):
        return f"agree is {type(c.agree).__name__}, not bool"
    score = c.diff_score
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        return f"diff_score is {type(score).__name__}, not float"
    for name in ("batch_size", "batch_agree"):
        value = getattr(c, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value not in _INT32
        ):
            return f"{name} is {value!r}, not a 32-bit int"
    return None
