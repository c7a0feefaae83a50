"""The embedded engine: DuckDB in this process, memory-limited and spilling (see ``load``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import duckdb

from shadowproxy.report import load
from shadowproxy.report.dialect import DUCKDB, Dialect
from shadowproxy.report.options import ReportOptions


class DuckDBEngine:
    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self.connection = connection

    @property
    def dialect(self) -> Dialect:
        return DUCKDB

    def attach_pairs(
        self, dataset: load.Dataset, files: Sequence[str], options: ReportOptions
    ) -> None:
        load.attach_pairs(self.connection, dataset, files, options)

    def attach_labels(
        self, dataset: load.Dataset, files: Sequence[str], labels: str | None
    ) -> bool:
        return load.attach_labels(self.connection, dataset, files, labels)

    def attach_exposures(
        self, dataset: load.Dataset, files: Sequence[str], options: ReportOptions
    ) -> bool:
        return load.attach_exposures(self.connection, dataset, files, options)

    def runner(
        self, dataset: load.Dataset, files: Sequence[str], on_step: Callable[[str], None]
    ) -> load.Runner:
        return load.Runner(self.connection, dataset, files, on_step)

    def drift_connection(
        self, dataset: load.Dataset, files: Sequence[str], options: ReportOptions
    ) -> AbstractContextManager[Any]:
        return nullcontext(self.connection)


@contextmanager
def open_engine(options: ReportOptions) -> Iterator[DuckDBEngine]:
    with load.connect(options) as connection:
        yield DuckDBEngine(connection)
