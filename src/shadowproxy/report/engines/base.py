"""What an engine offers the report: sources attached as views, queries run to rows.

An engine opens a session, attaches the recording (``pairs_raw``, ``scope_all``,
``scope``, ``exposures``, ``labels``), runs :class:`~shadowproxy.report.queries.Query`
values written in its :class:`~shadowproxy.report.dialect.Dialect`, and hands back small
results as lists of dicts (timestamps aware in UTC, exact sums as ``Decimal``, structs
as dicts, lists as lists), so the pure builders cannot tell the engines apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from shadowproxy.report.dialect import Dialect
from shadowproxy.report.queries import Query

if TYPE_CHECKING:
    from shadowproxy.report.load import Dataset
    from shadowproxy.report.options import ReportOptions

Rows = list[dict[str, Any]]

ENGINES = ("duckdb", "spark")
"""``--engine`` choices; DuckDB is the embedded default."""


class Runner(Protocol):
    """Runs the report's queries (what :mod:`~shadowproxy.report.analysis` sees)."""

    @property
    def dialect(self) -> Dialect: ...

    def rows(self, query: Query) -> Rows: ...


class Engine(Protocol):
    """One open session of an engine."""

    @property
    def dialect(self) -> Dialect: ...

    def attach_pairs(self, dataset: Dataset, files: Sequence[str], options: ReportOptions) -> None:
        """``pairs_raw``, ``scope_all`` and ``scope`` (see ``queries.scope_views``)."""

    def attach_labels(self, dataset: Dataset, files: Sequence[str], labels: str | None) -> bool:
        """``labels`` from the feedback files and ``--labels``; False without either."""

    def attach_exposures(
        self, dataset: Dataset, files: Sequence[str], options: ReportOptions
    ) -> bool:
        """``exposures``; False without exposure files."""

    def runner(
        self, dataset: Dataset, files: Sequence[str], on_step: Callable[[str], None]
    ) -> Runner: ...

    def drift_connection(
        self, dataset: Dataset, files: Sequence[str], options: ReportOptions
    ) -> AbstractContextManager[Any]:
        """The DuckDB connection the Drift section reads the recording through, with
        ``pairs_raw`` attached: on this machine whichever the engine (the Spark engine
        opens one of its own), as its reservoir sample of watched answers is DuckDB's."""
