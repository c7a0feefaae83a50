"""The engines the report runs on: DuckDB (embedded, the default) and Spark.

Both take the same queries (written once, in each engine's
:class:`~shadowproxy.report.dialect.Dialect`) and give the same rows; see ``base`` for
what an engine offers and ``spark`` for how the Spark session is found.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shadowproxy.report.engines.base import ENGINES, Engine, Rows, Runner
from shadowproxy.report.options import ReportInputError, ReportOptions

__all__ = ["ENGINES", "Engine", "Rows", "Runner", "open_engine"]


@contextmanager
def open_engine(options: ReportOptions) -> Iterator[Engine]:
    """The engine ``options.engine`` names, open for the length of the block."""
    if options.engine == "duckdb":
        from shadowproxy.report.engines import duckdb

        with duckdb.open_engine(options) as engine:
            yield engine
    elif options.engine == "spark":
        from shadowproxy.report.engines import spark

        with spark.open_engine(options) as session:
            yield session
    else:
        raise ReportInputError(f"--engine {options.engine!r}: choose one of {', '.join(ENGINES)}")
