"""The report on Spark: the scans and aggregations run in a Spark session.

Which session: ``--spark-master sc://HOST:15002`` or the ``SPARK_REMOTE`` environment
variable connect to an existing cluster through Spark Connect; ``--spark-master URL``
(``spark://…``, ``yarn``, ``local[4]``) starts a driver here against that master; with
neither, ``local[*]``. A Spark session already running in this process (a notebook's)
is borrowed instead, whatever the options: the report works in a new session of it and
leaves it as it was. The report's session runs in UTC (the report's timestamps are UTC
instants) with partition values read as text, as DuckDB reads them.

Which files: the ones discovery listed (through pyarrow, as for DuckDB), handed to
Spark as URIs: local paths as ``file://`` (a cluster must see them at the same path),
``s3://bucket/key`` as ``s3a://bucket/key``, which Spark reads through the hadoop-aws
jars and ``spark.hadoop.fs.s3a.*`` settings (not bundled with pyspark: see the docs).
``--labels`` is read on this machine and sent to the session, so it may be a local
file whatever the master.

Only aggregates and capped samples come back, through Arrow: timestamps as aware UTC
datetimes, exact sums as ``Decimal``, structs as dicts, as DuckDB gives them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shadowproxy.recording.schema import PAIRS_SCHEMA
from shadowproxy.report import load, queries
from shadowproxy.report.dialect import SPARK, SPARK_FUNCTIONS, Dialect
from shadowproxy.report.engines.base import Rows
from shadowproxy.report.options import CorruptFileError, ReportInputError, ReportOptions

SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.ansi.enabled": "true",
}
"""Settings of the session the report needs, set in the session it works in (ANSI SQL
is the semantics its queries are tested with, whatever the cluster's default)."""

LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.app.name": "shadowproxy-report",
}
"""Settings of a driver started here (a session already running keeps its own)."""

SPARK_TYPES = {"VARCHAR": "string", "DOUBLE": "double"}

S3A_HELP = (
    "Spark reads S3 through hadoop-aws: give the session the hadoop-aws and AWS SDK jars "
    "(spark.jars.packages=org.apache.hadoop:hadoop-aws:<Spark's Hadoop version>) and "
    "spark.hadoop.fs.s3a.* settings (endpoint, credentials provider), or report on "
    "this recording with --engine duckdb, which reads s3:// directly"
)


MIN_VERSION = (4, 1)
"""SQL functions (``CREATE FUNCTION … RETURN``) and the variant JSON functions."""


@contextmanager
def open_engine(options: ReportOptions) -> Iterator[SparkEngine]:
    """The session for one report. A driver started here is stopped afterwards; a
    session already running in this process is borrowed: the report works in a
    ``newSession()`` of it (its own temp views, functions and SQL settings, the same
    SparkContext), uncaches what it cached, and never stops it."""
    warehouse = tempfile.mkdtemp(prefix="shadowproxy-spark-")
    session: Any = None
    owned = False
    work: Any = None
    engine: SparkEngine | None = None
    try:
        session, owned = _session(options, warehouse)
        try:
            work = session if owned else session.newSession()
            _check_version(work.version)
            for key, value in SESSION_CONF.items():
                work.conf.set(key, value)
            for statement in SPARK_FUNCTIONS:
                work.sql(statement)
        except ReportInputError:
            raise
        except Exception as exc:  # the first round trips: an unreachable Connect server
            raise ReportInputError(
                f"cannot start Spark ({_where(options)}): {_first_line(exc)}"
            ) from None
        engine = SparkEngine(work)
        yield engine
    finally:
        if engine is not None:
            engine.uncache()
        if session is not None and owned:
            session.stop()
        shutil.rmtree(warehouse, ignore_errors=True)


def _check_version(version: str) -> None:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_VERSION:
        raise ReportInputError(
            f"--engine spark needs Spark {'.'.join(map(str, MIN_VERSION))} or later "
            f"(SQL functions, variant JSON); this session runs Spark {version}"
        )


def _where(options: ReportOptions) -> str:
    master = options.spark_master
    if master is None:
        master = os.environ.get("SPARK_REMOTE") or None
    return master or "local[*]"


def _running(session_class: Any) -> Any:
    """The session already running in this process (the thread's active one, else the
    JVM's or Connect client's default), which ``getOrCreate()`` would return; None if
    there is none."""
    active = session_class.getActiveSession()
    if active is not None:
        return active
    classic = getattr(session_class, "_instantiatedSession", None)
    if classic is not None:
        return classic
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # Spark Connect's extra dependencies are not installed
        return None
    return ConnectSession.getActiveSession() or ConnectSession._get_default_session()


def _session(options: ReportOptions, warehouse: str) -> tuple[Any, bool]:
    """The session and whether it is ours to stop: only one started by this call is.
    A session already running is borrowed whatever ``--spark-master`` says (Spark keeps
    one per process and ``getOrCreate()`` would return it, with the builder's settings
    written over its own). A driver started here keeps its ``spark-warehouse/``
    (created even when nothing is stored) in ``warehouse``, not in the working
    directory."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ReportInputError(
            f"--engine spark needs pyspark ({exc}): pip install 'shadowproxy-ml[spark]', "
            "and a Java 17+ runtime for a local session"
        ) from None
    master = options.spark_master
    remote = master if master and master.startswith("sc://") else None
    if master is None:
        remote = os.environ.get("SPARK_REMOTE") or None
    try:
        running = _running(SparkSession)
        if running is not None:
            return running, False
        if remote:
            return SparkSession.builder.remote(remote).getOrCreate(), True
        master = master or "local[*]"
        builder = SparkSession.builder.master(master)
        for key, value in LOCAL_CONF.items():
            builder = builder.config(key, value)
        builder = builder.config("spark.sql.warehouse.dir", warehouse)
        if master.startswith("local"):
            for key, value in local_mode_conf(master, os.cpu_count() or 1).items():
                builder = builder.config(key, value)
        session = builder.getOrCreate()
    except Exception as exc:  # pyspark raises its own tree, py4j's and RuntimeError
        raise ReportInputError(
            f"cannot start Spark ({_where(options)}): {_first_line(exc)} (a local session "
            "needs Java 17+ on PATH or JAVA_HOME)"
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session, True


def local_mode_conf(master: str, cpus: int) -> dict[str, str]:
    """A driver that is its own cluster: bound to loopback (nothing outside needs to
    reach it), and one shuffle partition per core rather than Spark's 200, whose
    per-task cost dominates the report's small aggregates (5 min against 1 on two cores
    for a 1,000-request recording). Other settings come from ``PYSPARK_SUBMIT_ARGS``
    (``--conf k=v … pyspark-shell``) or ``spark-defaults.conf``, as for any pyspark job."""
    inside = master[len("local") :].strip("[]").split(",")[0]
    cores = cpus if inside in ("", "*") else max(1, int(inside)) if inside.isdigit() else cpus
    return {
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.shuffle.partitions": str(cores),
    }


class SparkEngine:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.cached: list[str] = []

    def uncache(self) -> None:
        """Drops what the report cached: the table cache is shared with the session it
        borrowed from."""
        for name in self.cached:
            try:
                self.session.sql(f"UNCACHE TABLE IF EXISTS {name}")
            except Exception:  # a session gone bad has nothing left to drop
                return
        self.cached.clear()

    @property
    def dialect(self) -> Dialect:
        return SPARK

    def attach_pairs(
        self, dataset: load.Dataset, files: Sequence[str], options: ReportOptions
    ) -> None:
        if files:
            frame = self._read(dataset, files, "pairs")
        else:
            frame = self.session.createDataFrame(load._empty(PAIRS_SCHEMA))
        missing = [c for c in queries.REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ReportInputError(
                f"the pairs under {dataset.root} lack column(s) {', '.join(missing)}: "
                "not a shadowproxy recording, or one from an incompatible version"
            )
        frame = _with_nulls(frame, queries.OPTIONAL_COLUMNS)
        frame.createOrReplaceTempView("pairs_raw")
        for view in queries.scope_views(options.filters, SPARK):
            self.session.sql(view)

    def attach_exposures(
        self, dataset: load.Dataset, files: Sequence[str], options: ReportOptions
    ) -> bool:
        if not files:
            return False
        frame = _with_nulls(
            self._read(dataset, files, "exposures"), queries.OPTIONAL_EXPOSURE_COLUMNS
        )
        frame.createOrReplaceTempView("exposures_raw")
        self.session.sql(queries.exposure_view(options.filters, SPARK))
        return True

    def attach_labels(
        self, dataset: load.Dataset, files: Sequence[str], labels: str | None
    ) -> bool:
        feedback = file_source = None
        if files:
            self._read(dataset, files, "feedback").createOrReplaceTempView("feedback_raw")
            feedback = "feedback_raw"
        if labels:
            self.session.createDataFrame(read_labels_file(labels)).createOrReplaceTempView(
                "labels_file"
            )
            file_source = "labels_file"
        if feedback is None and file_source is None:
            return False
        for statement in queries.create_labels(feedback, file_source, SPARK):
            self._sql(statement, dataset, files)
        return True

    def runner(
        self, dataset: load.Dataset, files: Sequence[str], on_step: Callable[[str], None]
    ) -> SparkRunner:
        return SparkRunner(self, dataset, files, on_step)

    @contextmanager
    def _drift_connection(
        self, dataset: load.Dataset, files: Sequence[str], options: ReportOptions
    ) -> Iterator[Any]:
        with load.connect(options) as connection:
            load.attach_pairs(connection, dataset, files, options)
            yield connection

    def drift_connection(
        self, dataset: load.Dataset, files: Sequence[str], options: ReportOptions
    ) -> AbstractContextManager[Any]:
        return self._drift_connection(dataset, files, options)

    def _read(self, dataset: load.Dataset, files: Sequence[str], name: str) -> Any:
        """The files as one frame; columns by name across files written before a column
        was added; ``route`` and ``date`` from the Hive paths, as text."""
        reader = self.session.read.option("mergeSchema", "true")
        if name != "feedback":
            reader = reader.option("basePath", spark_uri(dataset, f"{dataset.base}/{name}"))
        try:
            return reader.parquet(*(spark_uri(dataset, f) for f in files))
        except Exception as exc:
            error = _explain(exc, files, f"reading the {name} files")
            if error is None:
                raise
            raise error from exc

    def _sql(self, sql: str, dataset: load.Dataset, files: Sequence[str]) -> Any:
        if sql.startswith("CACHE TABLE "):
            self.cached.append(sql.removeprefix("CACHE TABLE ").strip())
        try:
            return self.session.sql(sql)
        except Exception as exc:
            error = _explain(exc, files, sql.split(" AS ", 1)[0])
            if error is None:
                raise
            raise error from exc


class SparkRunner:
    """Runs queries in the session; results come back through Arrow."""

    def __init__(
        self,
        engine: SparkEngine,
        dataset: load.Dataset,
        files: Sequence[str],
        on_step: Callable[[str], None] = lambda _name: None,
    ) -> None:
        self.engine = engine
        self.dataset = dataset
        self.files = tuple(files)
        self.on_step = on_step

    @property
    def dialect(self) -> Dialect:
        return SPARK

    def rows(self, query: queries.Query) -> Rows:
        self.on_step(query.name)
        try:
            frame = self.engine.session.sql(query.sql, args=list(query.params) or None)
            table: pa.Table = frame.toArrow()
        except Exception as exc:
            error = _explain(exc, self.files, f"query {query.name}")
            if error is None:
                raise
            raise error from exc
        rows: Rows = table.to_pylist()
        return rows


def spark_uri(dataset: load.Dataset, path: str) -> str:
    """A file of the dataset as Spark names it (see the module docstring)."""
    if dataset.local:
        return "file://" + path
    kind = dataset.filesystem.type_name
    if kind == "s3":
        return "s3a://" + path
    if kind == "gcs":
        return "gs://" + path
    raise ReportInputError(
        f"--engine spark cannot read {dataset.root} (a {kind} filesystem): use a local "
        "directory, s3:// (read as s3a://) or gs://, or --engine duckdb"
    )


def read_labels_file(path: str) -> pa.Table:
    """``--labels`` as text columns (CSV with a header, or Parquet), checked for the two
    columns the report needs."""
    lowered = path.lower()
    try:
        if lowered.endswith((".parquet", ".pq")):
            table = pq.read_table(path)
        else:
            names = pacsv.open_csv(path).schema.names
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in names},
                    strings_can_be_null=True,
                ),
            )
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ReportInputError(f"cannot read labels file {path}: {_first_line(exc)}") from None
    if "request_id" not in table.column_names or "label" not in table.column_names:
        raise ReportInputError(
            f"labels file {path} has columns {', '.join(table.column_names)}; "
            "it needs a request_id column and a label column"
        )
    return table.select(["request_id", "label"])


def _with_nulls(frame: Any, columns: Sequence[tuple[str, str]]) -> Any:
    from pyspark.sql import functions

    for name, kind in columns:
        if name not in frame.columns:
            frame = frame.withColumn(name, functions.lit(None).cast(SPARK_TYPES[kind]))
    return frame


def _explain(exc: Exception, files: Sequence[str], what: str) -> ReportInputError | None:
    """A clear error for what the user can fix (a corrupt file, S3 without hadoop-aws),
    else Spark's own failure named by the step that met it (its first line: the rest is
    a JVM stack); None for what is not Spark's (a bug here keeps its traceback)."""
    message = str(exc)
    if "No FileSystem for scheme" in message or "S3AFileSystem" in message:
        return ReportInputError(f"Spark cannot read s3a:// ({_first_line(exc)}). {S3A_HELP}")
    named = [path for path in files if path in message]
    if named:
        return CorruptFileError(named[0], _first_line(exc))
    if _is_spark_error(exc):
        return ReportInputError(f"Spark failed in {what}: {_first_line(exc)}")
    return None


def _is_spark_error(exc: Exception) -> bool:
    from pyspark.errors import PySparkException

    if isinstance(exc, PySparkException):
        return True
    try:
        from py4j.protocol import Py4JError  # type: ignore[import-untyped]
    except ImportError:  # a Spark Connect client without py4j
        return False
    return isinstance(exc, Py4JError)


def _first_line(exc: BaseException) -> str:
    for error in (exc, exc.__cause__, exc.__context__):  # Spark Connect wraps gRPC's
        details = getattr(error, "details", None)
        if callable(details) and isinstance(message := details(), str) and message.strip():
            return message.strip().splitlines()[0]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
