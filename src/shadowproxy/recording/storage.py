"""Where recorded files go, how they appear atomically, and how to read them back.

Layout under the root (``recording.dir``: a local path or a ``pyarrow.fs`` URI)::

    <root>/pairs/route=<route>/date=<YYYY-MM-DD>/<host>-<pid>-<token>-<seq>.parquet
    <root>/exposures/route=<route>/date=<YYYY-MM-DD>/<host>-<pid>-<token>-<seq>.parquet
    <root>/telemetry/route=<route>/date=<YYYY-MM-DD>/<host>-<pid>-<token>-<seq>.parquet
    <root>/feedback/date=<YYYY-MM-DD>/<host>-<pid>-<token>-<seq>.parquet

File names carry the host, the process id, a random token per recorder and a
sequence number, so any number of proxies and workers share one root without
coordinating. A file is visible under its ``.parquet`` name only once complete:

* local disks: written to ``.<name>.tmp`` (readers skip dot-files, and globs on
  ``*.parquet`` never match it), fsynced, then renamed;
* object stores (s3://, gs://), where rename is a copy: the whole file is encoded in
  memory first and written with one ``open_output_stream`` to the final name; the
  object only exists once the upload completes.

A file's name is chosen once, when it is sealed, and every retry writes the same
bytes to the same name. An ambiguous failure (the upload completed but its answer was
lost) is therefore harmless: the retry overwrites the object with identical bytes, so
a file is never visible twice. (The alternatives cost more: "list, then skip if present
with the same size" adds a request per file and still races; a marker or manifest
needs readers that honour it.)

``s3://`` roots are opened with explicit options rather than by URI, so the endpoint
(MinIO, moto, any S3-compatible store) and the region come from ``recording`` and the
client fails fast instead of retrying inside a call: the writer has its own backoff,
and a shutdown must not wait on a store that is down.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import socket
from urllib.parse import quote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shadowproxy.recording.schema import (
    EXPOSURES_SCHEMA,
    FEEDBACK_SCHEMA,
    PAIRS_SCHEMA,
    PARTITION_COLUMNS,
    TELEMETRY_SCHEMA,
    Column,
)

PAIRS = "pairs"
FEEDBACK = "feedback"
EXPOSURES = "exposures"
TELEMETRY = "telemetry"
SCHEMAS: dict[str, pa.Schema] = {
    PAIRS: PAIRS_SCHEMA,
    FEEDBACK: FEEDBACK_SCHEMA,
    EXPOSURES: EXPOSURES_SCHEMA,
    TELEMETRY: TELEMETRY_SCHEMA,
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
_NO_DICTIONARY = (
    *_BODY_COLUMNS,
    "prod_prediction",
    "shadow_prediction",
    "prediction",
    "request_id",
)


S3_CONNECT_TIMEOUT_S = 2.0
S3_REQUEST_TIMEOUT_S = 10.0
"""How long one S3 call may wait to connect and for each answer; a failed call is
retried by the writer's backoff, not inside the call."""


def resolve_root(
    root: str, *, endpoint_url: str | None = None, region: str | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of ``recording.dir``.

    A plain path is local (relative to the working directory); ``s3://bucket/prefix``
    gets an ``S3FileSystem`` for ``endpoint_url`` (a full URL) and ``region``, with
    credentials from the AWS chain (environment, profile, role); any other scheme goes
    to ``pyarrow.fs.FileSystem.from_uri``. Raises ``ValueError`` for an unknown scheme
    and ``OSError`` when a store that must be asked (a bucket's region) cannot be reached.
    """
    if "://" not in root:
        return pafs.LocalFileSystem(), os.path.abspath(root)
    scheme, _, path = root.partition("://")
    if scheme == "s3":
        return s3_filesystem(path.split("/", 1)[0], endpoint_url, region), path.rstrip("/")
    filesystem, base = pafs.FileSystem.from_uri(root)
    return filesystem, base.rstrip("/")


def s3_filesystem(bucket: str, endpoint_url: str | None, region: str | None) -> pafs.S3FileSystem:
    """An S3 client that fails fast. Without an endpoint or a region, the bucket's
    region is looked up (an ``OSError`` when AWS is unreachable; the caller retries)."""
    if not bucket:
        raise ValueError("an s3:// URI needs a bucket: s3://bucket/prefix")
    options: dict[str, object] = {}
    if endpoint_url is not None:
        scheme, _, address = endpoint_url.partition("://")
        options.update(scheme=scheme, endpoint_override=address, region=region or "us-east-1")
    else:
        options.update(region=region or pafs.resolve_s3_region(bucket))
    return pafs.S3FileSystem(
        # The writer thread uploads one finished file at a time: background uploads
        # would only add threads and a copy of every file in flight.
        background_writes=False,
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        request_timeout=S3_REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        **options,
    )


def pairs_directory(route: str, date: str) -> str:
    return _route_directory(PAIRS, route, date)


def exposures_directory(route: str, date: str) -> str:
    return _route_directory(EXPOSURES, route, date)


def telemetry_directory(route: str, date: str) -> str:
    return _route_directory(TELEMETRY, route, date)


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

    @property
    def size(self) -> int:
        """Bytes encoded so far."""
        return int(self._sink.tell())

    def finish(self) -> pa.Buffer:
        self._writer.close()
        return self._sink.getvalue()


class Storage:
    """Writes complete files under one root; safe to share by many processes."""

    def __init__(
        self, root: str, *, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        self.root = root
        self._endpoint_url = endpoint_url
        self._region = region
        self._filesystem: pafs.FileSystem | None = None
        self._base = ""
        self.prefix = writer_prefix()
        """``<host>-<pid>-<random>``: what makes this writer's names its own."""
        self._sequence = itertools.count()

    def resolve(self) -> None:
        """Find the filesystem; raises like ``resolve_root``. Retried until it works."""
        if self._filesystem is None:
            self._filesystem, self._base = resolve_root(
                self.root, endpoint_url=self._endpoint_url, region=self._region
            )

    def new_name(self) -> str:
        """A file name no other writer uses, chosen once per file (retries reuse it)."""
        return f"{self.prefix}-{next(self._sequence):06d}.parquet"

    def write(self, directory: str, data: pa.Buffer, name: str | None = None) -> str:
        """Write a finished file as ``name`` (default a new one) in ``directory``
        (relative); its path. Writing the same name again replaces the file."""
        self.resolve()
        name = self.new_name() if name is None else name
        folder = f"{self._base}/{directory}"
        if isinstance(self._filesystem, pafs.LocalFileSystem):
            return _write_local(folder, name, data)
        assert self._filesystem is not None
        path = f"{folder}/{name}"
        with self._filesystem.open_output_stream(path) as out:
            out.write(data)
        return path


def writer_prefix() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


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


def read_dataset(root: str, *, endpoint_url: str | None = None) -> pa.Table:
    """Every recorded pair under ``root`` with its ``route`` and ``date`` partitions.

    Temporary files (dot-prefixed) are ignored; a root with nothing recorded yet gives
    an empty table of the same schema.
    """
    return _read(root, PAIRS, PAIRS_SCHEMA, PARTITION_COLUMNS, endpoint_url)


def read_feedback(root: str, *, endpoint_url: str | None = None) -> pa.Table:
    """Every recorded ground-truth label under ``root`` with its ``date`` partition."""
    return _read(root, FEEDBACK, FEEDBACK_SCHEMA, PARTITION_COLUMNS[1:], endpoint_url)


def read_exposures(root: str, *, endpoint_url: str | None = None) -> pa.Table:
    """Every recorded exposure under ``root`` with its ``route`` and ``date`` partitions."""
    return _read(root, EXPOSURES, EXPOSURES_SCHEMA, PARTITION_COLUMNS, endpoint_url)


def read_telemetry(root: str, *, endpoint_url: str | None = None) -> pa.Table:
    """Every production-only row of watched requests under ``root``, with partitions."""
    return _read(root, TELEMETRY, TELEMETRY_SCHEMA, PARTITION_COLUMNS, endpoint_url)


def _read(
    root: str,
    kind: str,
    schema: pa.Schema,
    partitions: tuple[Column, ...],
    endpoint_url: str | None,
) -> pa.Table:
    # Only readers pay for the dataset module (and the compute kernels it loads): the
    # writer process, which imports this module too, never scans.
    import pyarrow.dataset as ds

    fields = [pa.field(c.name, c.type) for c in partitions]
    full = pa.schema([*schema, *fields])
    filesystem, base = resolve_root(root, endpoint_url=endpoint_url)
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
