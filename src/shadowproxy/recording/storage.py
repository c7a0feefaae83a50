"""Where recorded files go, how they appear atomically, and how to read them back.

Layout under the root (``recording.dir``: a local path or a ``pyarrow.fs`` URI)::

    <root>/pairs/route=<route>/date=<YYYY-MM-DD>/<host>-<pid>-<token>-<seq>.parquet
    <root>/exposures/route=<route>/date=<YYYY-MM-DD>/<host>-<pid>-<token>-<seq>.parquet
    <root>/feedback/date=<YYYY-MM-DD>/<host>-<pid>-<token>-<seq>.parquet

File names carry the host, the process id, a random token per recorder and a
sequence number, so any number of proxies and workers share one root without
coordinating. A file is visible under its ``.parquet`` name only once complete:

* local disks: written to ``.<name>.tmp`` (readers skip dot-files, and globs on
  ``*.parquet`` never match it), fsynced, then renamed;
* object stores (s3://, gs://), where rename is a copy: the whole file is encoded in
  memory first and written with one ``open_output_stream`` to the final name; the
  object only exists once the upload completes.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import socket
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shadowproxy.recording.schema import (
    EXPOSURES_SCHEMA,
    FEEDBACK_SCHEMA,
    PAIRS_SCHEMA,
    PARTITION_COLUMNS,
    Column,
)

PAIRS = "pairs"
FEEDBACK = "feedback"
EXPOSURES = "exposures"
SCHEMAS: dict[str, pa.Schema] = {
    PAIRS: PAIRS_SCHEMA,
    FEEDBACK: FEEDBACK_SCHEMA,
    EXPOSURES: EXPOSURES_SCHEMA,
}
"""The kinds of record: their top-level directory (and ``records_written`` label) and schema."""

ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 64 * 1024 * 1024
"""A row group closes at whichever comes first. Large enough to compress well; small
enough that encoding one is a short step and a reader filtering on one shadow does
not decode a whole file."""

# Bodies are large and unique (and so are request ids): dictionaries and min/max
# statistics on them cost time and bytes and help no query.
_BODY_COLUMNS = ("request_body", "prod_body", "shadow_body")
_NO_DICTIONARY = (*_BODY_COLUMNS, "prod_prediction", "shadow_prediction", "request_id")


def resolve_root(root: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of ``recording.dir``.

    A plain path is local (relative to the working directory); anything with a scheme
    goes to ``pyarrow.fs.FileSystem.from_uri``, which raises ``ValueError`` for an
    unknown scheme and ``OSError`` when the store cannot be reached.
    """
    if "://" not in root:
        return pafs.LocalFileSystem(), os.path.abspath(root)
    filesystem, base = pafs.FileSystem.from_uri(root)
    return filesystem, base.rstrip("/")


def pairs_directory(route: str, date: str) -> str:
    return _route_directory(PAIRS, route, date)


def exposures_directory(route: str, date: str) -> str:
    return _route_directory(EXPOSURES, route, date)


def _route_directory(kind: str, route: str, date: str) -> str:
    # Route names are already tame (validation.NAME_PATTERN); quoting is a second fence
    # that keeps a stray '/' from ever leaving the partition.
    return f"{kind}/route={quote(route, safe='')}/date={date}"


def feedback_directory(date: str) -> str:
    return f"{FEEDBACK}/date={date}"


class Encoder:
    """One Parquet file (zstd) encoded in memory, a row group at a time.

    Encoding as rows arrive frees their Arrow memory early and spreads the CPU cost;
    the finished bytes are what gets written, and rewritten on a retry.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self._sink = pa.BufferOutputStream()
        self._writer = pq.ParquetWriter(
            self._sink,
            schema,
            compression="zstd",
            use_dictionary=[name for name in schema.names if name not in _NO_DICTIONARY],
            write_statistics=[name for name in schema.names if name not in _BODY_COLUMNS],
        )

    def write(self, table: pa.Table) -> None:
        """Encode ``table`` as one row group."""
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))

    def finish(self) -> pa.Buffer:
        self._writer.close()
        return self._sink.getvalue()


class Storage:
    """Writes complete files under one root; safe to share by many processes."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._filesystem: pafs.FileSystem | None = None
        self._base = ""
        host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
        self._prefix = f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
        self._sequence = itertools.count()

    def resolve(self) -> None:
        """Find the filesystem; raises like ``resolve_root``. Retried until it works."""
        if self._filesystem is None:
            self._filesystem, self._base = resolve_root(self.root)

    def write(self, directory: str, data: pa.Buffer) -> str:
        """Write a finished file as a new name in ``directory`` (relative); its path."""
        self.resolve()
        name = f"{self._prefix}-{next(self._sequence):06d}.parquet"
        folder = f"{self._base}/{directory}"
        if isinstance(self._filesystem, pafs.LocalFileSystem):
            return _write_local(folder, name, data)
        assert self._filesystem is not None
        path = f"{folder}/{name}"
        with self._filesystem.open_output_stream(path) as out:
            out.write(data)
        return path


def _write_local(folder: str, name: str, data: pa.Buffer) -> str:
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{name}.tmp")
    final = os.path.join(folder, name)
    try:
        with open(temporary, "wb") as out:
            out.write(memoryview(data))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_directory(folder)
    return final


def _fsync_directory(folder: str) -> None:
    """Make the rename itself durable (POSIX); best effort where directories can't open."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading back -----------------------------------------------------------------


def read_dataset(root: str) -> pa.Table:
    """Every recorded pair under ``root`` with its ``route`` and ``date`` partitions.

    Temporary files (dot-prefixed) are ignored; a root with nothing recorded yet gives
    an empty table of the same schema.
    """
    return _read(root, PAIRS, PAIRS_SCHEMA, PARTITION_COLUMNS)


def read_feedback(root: str) -> pa.Table:
    """Every recorded ground-truth label under ``root`` with its ``date`` partition."""
    return _read(root, FEEDBACK, FEEDBACK_SCHEMA, PARTITION_COLUMNS[1:])


def read_exposures(root: str) -> pa.Table:
    """Every recorded exposure under ``root`` with its ``route`` and ``date`` partitions."""
    return _read(root, EXPOSURES, EXPOSURES_SCHEMA, PARTITION_COLUMNS)


def _read(root: str, kind: str, schema: pa.Schema, partitions: tuple[Column, ...]) -> pa.Table:
    fields = [pa.field(c.name, c.type) for c in partitions]
    full = pa.schema([*schema, *fields])
    filesystem, base = resolve_root(root)
    path = f"{base}/{kind}"
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return full.empty_table()
    dataset = ds.dataset(
        path,
        filesystem=filesystem,
        format="parquet",
        schema=full,
        partitioning=ds.partitioning(pa.schema(fields), flavor="hive"),
        ignore_prefixes=[".", "_"],
    )
    return dataset.to_table()
