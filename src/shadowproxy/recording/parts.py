"""A part file: one future Parquet file built in memory a row group at a time, and a
sealed file's finished bytes waiting to be written."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa

from shadowproxy.recording.schema import (
    row_bytes,
    to_record_batch,
)
from shadowproxy.recording.spill import Spilled
from shadowproxy.recording.storage import (
    ROW_GROUP_BYTES,
    ROW_GROUP_ROWS,
    SCHEMAS,
    Encoder,
)

log = logging.getLogger(__name__)


BATCH_ROWS = 256


BATCH_BYTES = 2 * 1024 * 1024
"""Rows become Arrow batches this many (or this many bytes) at a time. Converting
Python objects to Arrow holds the GIL throughout, so a batch is also the longest the
event loop can be kept waiting by this thread; small batches keep that to a few ms
(row groups are sized separately, at write time)."""


_ARROW_REFUSALS = (pa.ArrowException, TypeError, ValueError, OverflowError)


@dataclass(slots=True)
class Sealed:
    """A finished file waiting for the store: its bytes in memory, or spilled to disk.
    ``adopted`` files came from another writer's spill and are not in this one's counts."""

    kind: str
    directory: str
    name: str
    rows: int
    data: pa.Buffer | None
    spilled: Spilled | None = None
    adopted: bool = False

    @property
    def memory_bytes(self) -> int:
        return 0 if self.data is None else int(self.data.size)


class PartFile:
    """One future file: rows -> Arrow batches -> row groups encoded in memory.

    It holds at most one unencoded row group; sealing gives the finished file's bytes.
    """

    def __init__(
        self, kind: str, directory: str, opened_at: float, group_bytes: int = ROW_GROUP_BYTES
    ) -> None:
        self.kind = kind
        self.directory = directory
        self.opened_at = opened_at
        self.schema = SCHEMAS[kind]
        self.rows = 0
        self.rejected = 0
        """Rows Arrow refused (see ``_build``), not yet counted as dropped."""
        self._encoder = Encoder(self.schema)
        self._pending: list[dict[str, object]] = []
        self._pending_bytes = 0
        self._group: list[pa.RecordBatch] = []
        self._group_bytes = 0
        self._max_group_bytes = group_bytes

    def add(self, row: dict[str, object]) -> None:
        self._pending.append(row)
        self._pending_bytes += row_bytes(row)
        self.rows += 1
        if len(self._pending) < BATCH_ROWS and self._pending_bytes < BATCH_BYTES:
            return
        self._build()
        group_rows = sum(batch.num_rows for batch in self._group)
        if group_rows >= ROW_GROUP_ROWS or self._group_bytes >= self._max_group_bytes:
            self._encode_group()

    def seal(self) -> pa.Buffer:
        """Encode what is left and finish the file's bytes."""
        if self._pending:
            self._build()
        self._encode_group()
        return self._encoder.finish()

    @property
    def memory_bytes(self) -> int:
        return self._pending_bytes + self._group_bytes + self._encoder.size

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
