"""What the user asked the report for, validated once at the edge.

The CLI's strings become a frozen :class:`ReportOptions`; a bad value raises
:class:`ReportInputError`, which the CLI prints and turns into exit status 2. The rest
of the package only sees validated options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from shadowproxy.compare import jsonpath
from shadowproxy.errors import ShadowproxyError
from shadowproxy.experiments.promotion import Promotion
from shadowproxy.monitor.spec import MonitorConfig


class ReportInputError(ShadowproxyError):
    """The report's input is unusable: a missing root, no matching rows, a malformed
    labels file or a corrupt Parquet file. The message says which and how to fix it."""


class CorruptFileError(ReportInputError):
    """A Parquet file that cannot be read; ``--skip-bad-files`` skips and counts it."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"corrupt Parquet file {path}: {reason} "
            "(remove it, or pass --skip-bad-files to report without it)"
        )


@dataclass(frozen=True)
class Filters:
    routes: tuple[str, ...] = ()
    shadows: tuple[str, ...] = ()
    since: datetime | None = None
    """Inclusive, UTC."""
    until: datetime | None = None
    """Exclusive, UTC."""

    def as_json(self) -> dict[str, object]:
        return {
            "route": list(self.routes) or None,
            "shadow": list(self.shadows) or None,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


@dataclass(frozen=True)
class ReportOptions:
    root: str
    filters: Filters = Filters()
    labels: str | None = None
    segments: tuple[jsonpath.JsonPath, ...] = ()
    out: str | None = None
    json_out: str | None = None
    skip_bad_files: bool = False
    memory_limit: str = "1GB"
    """DuckDB's budget; past it, sorts and joins spill to ``temp_directory``."""
    threads: int | None = None
    temp_directory: str | None = None
    """Where DuckDB spills; a fresh temporary directory when None."""
    examples_per_pair: int = 5
    top_classes: int = 20
    """Confusion matrices show every class up to this many; beyond it, the most frequent
    ones and ``(other)``."""
    top_segments: int = 12
    sample_size: int = 20_000
    """Per-request latency pairs fetched (a hash sample) for the p99 ratio's interval."""
    outcome: str = "auto"
    """The experiments' outcome kind: ``auto``, ``binary``, ``continuous``, ``ordinal``."""
    mde: float = 0.05
    """The effect the experiments' power figures plan for, relative to the control."""
    promotions: tuple[tuple[str, Promotion], ...] = ()
    """Each route's ``promotion:`` block from ``--config``; routes not listed (and every
    route without ``--config``) are decided on the documented defaults."""
    canary_states: tuple[tuple[str, str], ...] = ()
    """``(route, state file)`` of each canary route in ``--config``: the canary section
    reads the decisions the proxy recorded there."""
    gate: bool = False
    """``--gate``: exit 0 on PROMOTE, 3 on HOLD, 4 on REJECT (the worst candidate)."""
    monitors: Mapping[str, MonitorConfig] | None = None
    """The routes' ``monitor:`` blocks from ``--config``; None: no Drift section."""
    config: str | None = None
    """The ``--config`` file they came from."""
    engine: str = "duckdb"
    """``--engine``: ``duckdb`` (embedded) or ``spark``; both give the same summary."""
    spark_master: str | None = None
    """``--spark-master``: ``sc://…`` (Spark Connect), ``spark://…``, ``yarn``,
    ``local[N]``; None: ``SPARK_REMOTE``, a session already running, else ``local[*]``."""


OUTCOME_KINDS = ("auto", "binary", "continuous", "ordinal")


def parse_mde(text: str) -> float:
    """``--mde``: a relative effect such as 0.05 (5% of the control's mean)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 10.0:
        raise ReportInputError(f"--mde {text!r}: give a relative effect above 0, e.g. 0.05 for 5%")
    return value


def parse_time(text: str, *, end: bool) -> datetime:
    """An ISO date or timestamp as aware UTC. A bare date used as ``--until`` means the
    end of that day, so ``--since 2024-05-01 --until 2024-05-01`` is that whole day."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        parsed = datetime.fromisoformat(text)
    except ValueError:
        flag = "--until" if end else "--since"
        raise ReportInputError(
            f"{flag} {text!r} is not an ISO date or timestamp (e.g. 2024-05-01 or "
            "2024-05-01T12:00:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_segment(text: str) -> jsonpath.JsonPath:
    try:
        return jsonpath.parse(text)
    except ValueError as exc:
        raise ReportInputError(f"--segment: {exc}") from None


def duckdb_path(path: jsonpath.JsonPath) -> tuple[str, bool]:
    """Our JSON path in DuckDB's syntax, and whether it selects several values.

    Keys are always quoted (``$."a"``) so any character is safe; negative indexes
    become ``[#-N]``. DuckDB's ``[*]`` walks arrays only and ``.*`` objects only, while
    ours means either: each wildcard keeps the spelling it was written with.
    """
    wildcards = iter(_wildcard_tokens(path.text))
    parts = ["$"]
    for step in path.steps:
        if isinstance(step, int):
            parts.append(f"[#{step}]" if step < 0 else f"[{step}]")
        elif isinstance(step, str):
            parts.append('."' + step.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            parts.append(next(wildcards))
    return "".join(parts), any(not isinstance(s, int | str) for s in path.steps)


def _wildcard_tokens(text: str) -> list[str]:
    """``.*`` and ``[*]`` in order of appearance, skipping quoted keys."""
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text.startswith(("['", '["'), pos):
            quote = text[pos + 1]
            pos += 2
            while pos < len(text) and text[pos] != quote:
                pos += 2 if text[pos] == "\\" else 1
            pos += 2
        elif text.startswith((".*", "[*]"), pos):
            token = ".*" if text.startswith(".*", pos) else "[*]"
            tokens.append(token)
            pos += len(token)
        else:
            pos += 1
    return tokens
