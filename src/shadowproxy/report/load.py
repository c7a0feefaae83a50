"""The I/O shell of the report: finding the files, opening DuckDB, running queries.

Discovery lists ``<root>/pairs/**.parquet``, ``<root>/exposures/**.parquet`` (experiment
routes) and ``<root>/feedback/**.parquet`` through
a pyarrow filesystem, so ROOT may be a local directory or any URI pyarrow understands
(``s3://``, ``gs://``, ``file://``). Names starting with ``.`` are a writer's
temporary files and are skipped. Local files are scanned by DuckDB's own Parquet
reader; files elsewhere are handed to DuckDB as a pyarrow dataset (DuckDB pushes
projections and filters into it, so that path streams too).

DuckDB runs with a memory limit and a spill directory: every query is a streaming
aggregation, so the report's memory does not grow with the dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shadowproxy.config import endpoint_from
from shadowproxy.errors import ConfigError
from shadowproxy.recording.schema import PAIRS_SCHEMA
from shadowproxy.recording.storage import resolve_root
from shadowproxy.report import queries
from shadowproxy.report.dialect import DUCKDB, Dialect
from shadowproxy.report.options import CorruptFileError, ReportInputError, ReportOptions

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Dataset:
    root: str
    filesystem: pafs.FileSystem
    local: bool
    base: str
    """The root as a path inside ``filesystem``."""
    pair_files: tuple[str, ...]
    feedback_files: tuple[str, ...]
    exposure_files: tuple[str, ...] = ()
    telemetry_files: tuple[str, ...] = ()
    """Production-only rows of watched requests (read by the Drift section only)."""


def discover(root: str) -> Dataset:
    """The dataset's files; ``ReportInputError`` when the root is missing or holds
    neither pairs nor exposures (an A/B route without shadows records only the latter)."""
    filesystem, base = _filesystem(root)
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise ReportInputError(f"recording directory {root} does not exist")
    if info.type != pafs.FileType.Directory:
        raise ReportInputError(f"{root} is not a directory (expected recording.dir)")
    pairs = _parquet_files(filesystem, f"{base}/pairs")
    exposures = _parquet_files(filesystem, f"{base}/exposures")
    telemetry = _parquet_files(filesystem, f"{base}/telemetry")
    if not pairs and not exposures and not telemetry:
        raise ReportInputError(
            f"no Parquet files under {root}/pairs (is {root} the recording.dir of a proxy "
            "that has recorded traffic?)"
        )
    return Dataset(
        root=root,
        filesystem=filesystem,
        local=isinstance(filesystem, pafs.LocalFileSystem),
        base=base,
        pair_files=pairs,
        feedback_files=_parquet_files(filesystem, f"{base}/feedback"),
        exposure_files=exposures,
        telemetry_files=telemetry,
    )


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The store of ``root``; ``s3://`` goes to the endpoint ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` names (MinIO, any S3-compatible store), as the proxy does.
    ``s3a://`` (Hadoop's name for the same store, as Spark users write it) is ``s3://``."""
    if root.startswith("s3a://"):
        root = "s3://" + root[len("s3a://") :]
    if "://" in root:
        try:
            return resolve_root(root, endpoint_url=endpoint_from(os.environ))
        except ConfigError as exc:
            raise ReportInputError(str(exc)) from None
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ReportInputError(f"cannot open {root}: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(root).rstrip("/")


def _parquet_files(filesystem: pafs.FileSystem, directory: str) -> tuple[str, ...]:
    selector = pafs.FileSelector(directory, recursive=True, allow_not_found=True)
    files = [
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not any(part.startswith(".") for part in info.path[len(directory) :].split("/"))
    ]
    return tuple(sorted(files))


def check_footers(dataset: Dataset, paths: Sequence[str]) -> list[CorruptFileError]:
    """Files whose footer cannot be read (truncated, empty, not Parquet). Cheap: only
    the footer is read. Damage inside a file surfaces later, when a query decodes it."""
    bad = []
    for path in paths:
        try:
            with dataset.filesystem.open_input_file(path) as handle:
                pq.read_metadata(handle)
        except (OSError, ValueError) as exc:
            bad.append(CorruptFileError(path, str(exc).splitlines()[0]))
    return bad


# --- DuckDB --------------------------------------------------------------------------


@contextmanager
def connect(options: ReportOptions) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with a memory limit and its own spill directory."""
    spill = options.temp_directory or tempfile.mkdtemp(prefix="shadowproxy-report-")
    connection = duckdb.connect(":memory:")
    try:
        try:
            connection.execute(f"SET memory_limit = {queries.literal(options.memory_limit)}")
        except duckdb.Error as exc:
            raise ReportInputError(
                f"--memory-limit {options.memory_limit!r}: {_first_line(exc)}"
            ) from None
        connection.execute(f"SET temp_directory = {queries.literal(spill)}")
        connection.execute("SET preserve_insertion_order = false")
        connection.execute("SET enable_progress_bar = false")
        if options.threads:
            connection.execute(f"SET threads = {int(options.threads)}")
        for macro in queries.MACROS:
            connection.execute(macro)
        yield connection
    finally:
        connection.close()
        if options.temp_directory is None:
            shutil.rmtree(spill, ignore_errors=True)


def attach_pairs(
    connection: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    files: Sequence[str],
    options: ReportOptions,
) -> None:
    """Create the views ``pairs_raw`` (every row), ``scope_all`` (the filtered rows) and
    ``scope`` (those without injected faults). No files give empty views."""
    if not files:
        connection.register("pairs_empty", _empty(PAIRS_SCHEMA))
        source = "pairs_empty"
    else:
        source = _source(connection, dataset, files, "pairs")
    connection.execute(queries.create_view("pairs_raw", source))
    present = {row[0] for row in connection.execute(queries.columns("pairs_raw").sql).fetchall()}
    missing = [c for c in queries.REQUIRED_COLUMNS if c not in present]
    if missing:
        raise ReportInputError(
            f"the pairs under {dataset.root} lack column(s) {', '.join(missing)}: "
            "not a shadowproxy recording, or one from an incompatible version"
        )
    absent = [(c, kind) for c, kind in queries.OPTIONAL_COLUMNS if c not in present]
    if absent:
        connection.execute(queries.create_view("pairs_raw", source, absent))
    for view in queries.scope_views(options.filters):
        connection.execute(view)


def attach_exposures(
    connection: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    files: Sequence[str],
    options: ReportOptions,
) -> bool:
    """Create the view ``exposures`` (filtered like the pairs, injected faults
    included); False when there are no exposure files."""
    if not files:
        return False
    source = _source(connection, dataset, files, "exposures")
    connection.execute(queries.create_view("exposures_raw", source))
    present = {
        row[0] for row in connection.execute(queries.columns("exposures_raw").sql).fetchall()
    }
    absent = [(c, kind) for c, kind in queries.OPTIONAL_EXPOSURE_COLUMNS if c not in present]
    if absent:
        connection.execute(queries.create_view("exposures_raw", source, absent))
    connection.execute(queries.exposure_view(options.filters))
    return True


def _empty(schema: pa.Schema) -> pa.Table:
    partitions = [pa.field("route", pa.string()), pa.field("date", pa.string())]
    return pa.schema([*schema, *partitions]).empty_table()


def attach_labels(
    connection: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    files: Sequence[str],
    labels: str | None,
) -> bool:
    """Create the table ``labels`` from the feedback files and ``--labels``; False when
    there are neither."""
    feedback = _source(connection, dataset, files, "feedback") if files else None
    file_source = _labels_file(connection, labels) if labels else None
    if feedback is None and file_source is None:
        return False
    for statement in queries.create_labels(feedback, file_source):
        connection.execute(statement)
    return True


def _labels_file(connection: duckdb.DuckDBPyConnection, path: str) -> str:
    source = queries.labels_file_source(path)
    try:
        names = [
            row[0] for row in connection.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
        ]
    except duckdb.Error as exc:
        raise ReportInputError(f"cannot read labels file {path}: {_first_line(exc)}") from None
    if "request_id" not in names or "label" not in names:
        raise ReportInputError(
            f"labels file {path} has columns {', '.join(names)}; "
            "it needs a request_id column and a label column"
        )
    return source


def _source(
    connection: duckdb.DuckDBPyConnection, dataset: Dataset, files: Sequence[str], name: str
) -> str:
    """The scan of ``files``: DuckDB's reader for local files, else a pyarrow dataset."""
    hive = name != "feedback"
    if dataset.local:
        return queries.parquet_source(files, hive=hive)
    keys = ["route", "date"] if hive else ["date"]
    arrow = ds.dataset(
        list(files),
        filesystem=dataset.filesystem,
        format="parquet",
        # Partition values stay text, as in the local path: a route named "2024" is a name.
        partitioning=ds.partitioning(pa.schema([(k, pa.string()) for k in keys]), flavor="hive"),
        partition_base_dir=f"{dataset.base}/{name}",
    )
    connection.register(f"{name}_arrow", arrow)
    return f"{name}_arrow"


# --- running queries -----------------------------------------------------------------


class Runner:
    """Runs queries, reports progress, and turns a read failure into the file's name."""

    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        dataset: Dataset,
        files: Sequence[str],
        on_step: Callable[[str], None] = lambda _name: None,
    ) -> None:
        self.connection = connection
        self.dataset = dataset
        self.files = tuple(files)
        self.on_step = on_step

    @property
    def dialect(self) -> Dialect:
        return DUCKDB

    def rows(self, query: queries.Query) -> Rows:
        self.on_step(query.name)
        try:
            cursor = self.connection.execute(query.sql, list(query.params))
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except duckdb.Error as exc:
            raise self._explain(exc) from exc

    def execute(self, sql: str) -> None:
        try:
            self.connection.execute(sql)
        except duckdb.Error as exc:
            raise self._explain(exc) from exc

    def _explain(self, exc: duckdb.Error) -> Exception:
        """A ``CorruptFileError`` naming the file when one is to blame, else ``exc``."""
        message = _first_line(exc)
        if isinstance(exc, duckdb.OutOfMemoryException):
            return ReportInputError(f"DuckDB ran out of memory ({message}); raise --memory-limit")
        named = [path for path in self.files if path in str(exc)]
        if named:
            return CorruptFileError(named[0], message)
        culprit = self._locate_corrupt()
        return CorruptFileError(culprit, message) if culprit else exc

    def _locate_corrupt(self) -> str | None:
        """Decode each file in turn. Slow, but only runs after a read already failed
        without saying where (DuckDB does not always name the file)."""
        for path in self.files:
            try:
                if self.dataset.local:
                    source = queries.parquet_source([path], hive=False)
                    self.connection.execute(queries.probe_file(source).sql).fetchall()
                else:
                    with self.dataset.filesystem.open_input_file(path) as handle:
                        pq.read_table(handle)
            except (duckdb.Error, OSError, ValueError):
                return path
        return None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
