"""Every SQL statement of the report, and nothing else.

The report is a handful of aggregations over the recorded pairs, each run as one
streaming scan; only aggregates and capped samples come back to Python. Keeping the
SQL in this module and its two siblings (``queries_runs`` for chaos and experiments,
``queries_drift`` for the monitor) is what lets the same queries move to Spark or Trino later: the
DuckDB-specific pieces are few and named here (``read_parquet`` options, the ``sp_*``
macros, ``quantile_cont``, ``max_by(x, y, n)``, ``hash``, ``try``/``decode`` for
bodies) and each has a direct counterpart there: :mod:`~shadowproxy.report.dialect`
renders them for the engine at hand (DuckDB or Spark), so each query is written once.
Quantiles are exact, not t-digest estimates, and every query whose row order reaches a
statistic sorts on a total key, so the same recording always gives the same report on
either engine.

Every query reads the view ``scope``: the pairs after the command line's filters,
without the rows that carry an injected fault (chaos). Only the chaos queries read
``scope_all``, which keeps them. Functions return :class:`Query` values (text plus
positional parameters); nothing here opens a connection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shadowproxy.compare import jsonpath
from shadowproxy.report.dialect import DUCKDB, Dialect
from shadowproxy.report.options import Filters

KINDS = "regexp_replace(coalesce(comparator, ''), '^auto:', '')"
"""The comparator family of a row: ``auto:label`` and ``label`` are both ``label``."""

CLASS_KINDS = "('label', 'probabilities')"
"""Comparators whose predictions name a class (a score vector's class is its argmax)."""


def latency_pair(d: Dialect = DUCKDB) -> str:
    """Latencies are compared only on requests both sides answered, with finite latencies
    (``isfinite`` of NULL is NULL, so missing ones are out too)."""
    return (
        f"shadow_outcome = 'ok' AND {d.finite('prod_latency_ms')} "
        f"AND {d.finite('shadow_latency_ms')}"
    )


LATENCY_PAIR = latency_pair()

LATENCY_DIFF = "(shadow_latency_ms - prod_latency_ms)"
"""One request's latency difference, shadow minus production (ms)."""

SENT = "shadow_outcome IN ('ok', 'error', 'timeout')"
"""Rows whose copy reached the shadow (or was meant to and failed)."""


def nonfinite_latency(d: Dialect = DUCKDB) -> str:
    """A NaN or infinite latency: counted, warned about and left out of latency figures."""
    return f"(NOT {d.finite('prod_latency_ms')} OR NOT {d.finite('shadow_latency_ms')})"


LATENCY_BUCKETS_PER_DOUBLING = 8
HASH_MODULUS = 1_000_000

REQUIRED_COLUMNS = (
    "request_id",
    "ts",
    "route",
    "shadow",
    "role",
    "method",
    "path",
    "prod_status",
    "prod_latency_ms",
    "shadow_outcome",
    "shadow_status",
    "shadow_latency_ms",
    "request_body",
    "prod_body",
    "shadow_body",
    "prod_prediction",
    "shadow_prediction",
    "agree",
    "comparator",
    "diff_score",
    "compare_detail",
)

OPTIONAL_COLUMNS = (("chaos", "VARCHAR"), ("prod_chaos", "VARCHAR"))
"""Columns added after the first recordings: read as null from files that lack them."""

OPTIONAL_EXPOSURE_COLUMNS = (("chaos", "VARCHAR"), ("share", "DOUBLE"))
"""Exposure columns added after the first recordings: null where a file lacks them."""

CLEAN = "chaos IS NULL AND prod_chaos IS NULL"
"""A row without injected faults: the only kind the figures of each pair count."""

MACROS = (
    # A one-element list as its element ("[3]" -> "3"); anything else as it is.
    """CREATE OR REPLACE TEMP MACRO sp_unwrap_one(j) AS
       CASE WHEN json_type(j) = 'ARRAY' AND json_array_length(j) = 1 THEN json_extract(j, '$[0]')
            ELSE j::JSON END""",
    # A prediction or label as JSON, unwrapped twice: a batch of one ("[3]") and a batch
    # of one row of width 1 ("[[3]]", a classifier's [N, 1] output) both name class 3,
    # as the label comparator reads them; "[[0.1, 0.9]]" stays a score vector.
    """CREATE OR REPLACE TEMP MACRO sp_unwrap(j) AS
       CASE WHEN NOT json_valid(j) THEN NULL ELSE sp_unwrap_one(sp_unwrap_one(j)) END""",
    # The class a prediction or label names, as comparable text: strings as themselves,
    # integral numbers without ".0" (so "2", 2 and 2.0 meet), a score vector's argmax.
    """CREATE OR REPLACE TEMP MACRO sp_class_of(u) AS
       CASE json_type(u)
            WHEN 'VARCHAR' THEN json_extract_string(u, '$')
            WHEN 'NULL' THEN NULL
            WHEN 'ARRAY' THEN CAST(list_position(TRY_CAST(u AS DOUBLE[]),
                                   list_max(TRY_CAST(u AS DOUBLE[]))) - 1 AS VARCHAR)
            WHEN 'BOOLEAN' THEN u::VARCHAR
            WHEN 'OBJECT' THEN u::VARCHAR
            ELSE CASE WHEN u::DOUBLE = floor(u::DOUBLE) AND abs(u::DOUBLE) < 1e15
                      THEN CAST(CAST(u::DOUBLE AS BIGINT) AS VARCHAR)
                      ELSE CAST(u::DOUBLE AS VARCHAR) END
       END""",
    "CREATE OR REPLACE TEMP MACRO sp_class(j) AS sp_class_of(sp_unwrap(j))",
    # A numeric prediction or label; NULL when it is not a JSON number.
    """CREATE OR REPLACE TEMP MACRO sp_number_of(u) AS
       CASE WHEN json_type(u) IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN u::DOUBLE END""",
    "CREATE OR REPLACE TEMP MACRO sp_number(j) AS sp_number_of(sp_unwrap(j))",
    # An experiment's outcome: a JSON number, or a boolean as 1/0; NULL otherwise.
    """CREATE OR REPLACE TEMP MACRO sp_outcome(j) AS
       CASE WHEN NOT json_valid(j) THEN NULL
            WHEN json_type(j::JSON) = 'BOOLEAN' THEN CASE trim(j) WHEN 'true' THEN 1.0 ELSE 0.0 END
            ELSE sp_number_of(j::JSON) END""",
    # A label typed by a person ("cat", 3, true) as JSON text: plain words become strings.
    """CREATE OR REPLACE TEMP MACRO sp_label_json(t) AS
       CASE WHEN t IS NULL OR trim(t) = '' THEN NULL
            WHEN json_valid(trim(t)) THEN trim(t)
            ELSE to_json(t)::VARCHAR END""",
)


@dataclass(frozen=True, slots=True)
class Query:
    """One statement; its result columns all have names (rows come back as dicts)."""

    name: str
    """What the progress bar says while it runs."""
    sql: str
    params: tuple[object, ...] = ()


def literal(value: str) -> str:
    """A SQL string literal; only for view definitions, which take no parameters."""
    return "'" + value.replace("'", "''") + "'"


def _string_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(literal(v) for v in values) + "]"


# --- sources -------------------------------------------------------------------------


def exact(expression: str, d: Dialect = DUCKDB) -> str:
    """A per-row value as a fixed-point decimal, so that its ``sum`` is exact: a sum of
    doubles depends on the order DuckDB's threads add them in, and the same recording
    must always give the same report, to the last digit. Non-finite values become NULL
    (DuckDB casts before it filters, and a NaN has no decimal)."""
    return f"CAST(CASE WHEN {d.finite(expression)} THEN {expression} END AS DECIMAL(38, 12))"


def parquet_source(paths: Sequence[str], *, hive: bool) -> str:
    """A scan of the given files. ``union_by_name`` tolerates files written before a
    column was added; Hive partition values come back as text, never guessed types."""
    options = "union_by_name = true"
    if hive:
        options += ", hive_partitioning = true, hive_types = {'route': VARCHAR, 'date': VARCHAR}"
    return f"read_parquet({_string_list(paths)}, {options})"


def create_view(name: str, source: str, missing: Sequence[tuple[str, str]] = ()) -> str:
    """A view of ``source``; ``missing`` columns (name, SQL type) are added as nulls."""
    nulls = "".join(f", NULL::{kind} AS {column}" for column, kind in missing)
    return f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT *{nulls} FROM {source}"


def scope_views(filters: Filters, d: Dialect = DUCKDB) -> tuple[str, str]:
    """``scope_all`` (the filtered pairs) and ``scope`` (those without injected faults,
    which every query but the chaos ones reads). Conditions on ``route`` and ``date``
    are plain comparisons with constants, so DuckDB prunes whole partitions."""
    where = _conditions(filters, d, shadows=True)
    return (
        f"CREATE OR REPLACE TEMP VIEW scope_all AS SELECT * FROM pairs_raw WHERE {where}",
        f"CREATE OR REPLACE TEMP VIEW scope AS SELECT * FROM scope_all WHERE {CLEAN}",
    )


def exposure_view(filters: Filters, d: Dialect = DUCKDB) -> str:
    """``exposures``: the exposures after the route and time filters (``--shadow`` does
    not apply: an arm is not a shadow). Rows with injected faults stay in the view; the
    experiment queries leave them out."""
    where = _conditions(filters, d, shadows=False)
    return f"CREATE OR REPLACE TEMP VIEW exposures AS SELECT * FROM exposures_raw WHERE {where}"


def _conditions(filters: Filters, d: Dialect, *, shadows: bool) -> str:
    conditions = ["TRUE"]
    if filters.routes:
        conditions.append(f"route IN ({', '.join(literal(r) for r in filters.routes)})")
    if filters.shadows and shadows:
        conditions.append(f"shadow IN ({', '.join(literal(s) for s in filters.shadows)})")
    if filters.since is not None:
        conditions.append(f"date >= {literal(filters.since.date().isoformat())}")
        conditions.append(f"ts >= {d.timestamp(literal(filters.since.isoformat()))}")
    if filters.until is not None:
        conditions.append(f"date <= {literal(filters.until.date().isoformat())}")
        conditions.append(f"ts < {d.timestamp(literal(filters.until.isoformat()))}")
    return " AND ".join(conditions)


def columns(view: str) -> Query:
    return Query(f"columns of {view}", f"DESCRIBE SELECT * FROM {view}")


# --- labels --------------------------------------------------------------------------


def labels_file_source(path: str) -> str:
    """A labels file read as text, so ids like ``007`` and labels like ``1.0`` survive."""
    lowered = path.lower()
    if lowered.endswith(".parquet") or lowered.endswith(".pq"):
        return f"read_parquet({literal(path)})"
    return f"read_csv({literal(path)}, header = true, all_varchar = true)"


def create_labels(
    feedback_source: str | None, file_source: str | None, d: Dialect = DUCKDB
) -> list[str]:
    """One label per request: the newest feedback, overridden by the ``--labels`` file
    (an explicit file is a deliberate correction)."""
    parts = []
    if feedback_source is not None:
        parts.append(
            f"""SELECT CAST(request_id AS {d.text}) AS request_id,
                       {d.arg_max(f"sp_label_json(CAST(label AS {d.text}))", "ts")} AS label,
                       1 AS priority
                FROM {feedback_source}
                WHERE request_id IS NOT NULL
                  AND sp_label_json(CAST(label AS {d.text})) IS NOT NULL
                GROUP BY request_id"""
        )
    if file_source is not None:
        parts.append(
            f"""SELECT CAST(request_id AS {d.text}) AS request_id,
                       min(sp_label_json(CAST(label AS {d.text}))) AS label, 2 AS priority
                FROM {file_source}
                WHERE request_id IS NOT NULL
                  AND sp_label_json(CAST(label AS {d.text})) IS NOT NULL
                GROUP BY request_id"""
        )
    union = "\nUNION ALL\n".join(parts)
    select = f"""SELECT request_id, {d.arg_max("label", "priority")} AS label
        FROM ({union}) GROUP BY request_id"""
    return d.create_table("labels", select)


# --- aggregations --------------------------------------------------------------------


def pair_summary(d: Dialect = DUCKDB) -> Query:
    """Volume, outcomes, agreement, HTTP errors and latency percentiles per pair.

    Percentiles are exact (``quantile_cont``: linear interpolation between order
    statistics, type 7 of Hyndman and Fan, numpy's default). The per-request latency
    difference's mean and variance feed the paired t test, over every pair. ``sent``,
    ``shadow_failed`` and ``prod_failed`` are the error-rate criterion's counts: copies
    sent, those the shadow failed (error, timeout or 5xx) and, on the same requests,
    production's 5xx answers.
    """
    outcomes = ",\n".join(
        f"count(*) FILTER (WHERE shadow_outcome = '{o}') AS {o}"
        for o in ("ok", "error", "timeout", "dropped", "skipped")
    )
    pair = latency_pair(d)
    sql = f"""
    SELECT route, shadow, mode(role) AS role, count(*) AS rows,
        {outcomes},
        count(agree) AS compared,
        count(*) FILTER (WHERE agree) AS agreed,
        count(prod_status) AS prod_responses,
        count(*) FILTER (WHERE prod_status >= 500) AS prod_5xx,
        count(shadow_status) AS shadow_responses,
        count(*) FILTER (WHERE shadow_status >= 500) AS shadow_5xx,
        count(*) FILTER (WHERE shadow_status <> prod_status) AS status_mismatch,
        mode({KINDS}) FILTER (WHERE agree IS NOT NULL) AS comparator,
        min(ts) AS first_ts, max(ts) AS last_ts,
        count(*) FILTER (WHERE {pair}) AS latency_pairs,
        count(*) FILTER (WHERE {nonfinite_latency(d)}) AS nonfinite_latency,
        sum({exact(LATENCY_DIFF, d)}) FILTER (WHERE {pair}) AS latency_d_sum,
        sum({exact(f"{LATENCY_DIFF} * {LATENCY_DIFF}", d)})
            FILTER (WHERE {pair}) AS latency_d_sq,
        count(*) FILTER (WHERE {SENT}) AS sent,
        count(*) FILTER (WHERE {SENT} AND (shadow_outcome <> 'ok' OR shadow_status >= 500))
            AS shadow_failed,
        count(*) FILTER (WHERE {SENT} AND coalesce(prod_status >= 500, true)) AS prod_failed,
        {d.quantiles("prod_latency_ms", (0.5, 0.95, 0.99))} FILTER (WHERE {pair}) AS prod_q,
        {d.quantiles("shadow_latency_ms", (0.5, 0.95, 0.99))}
            FILTER (WHERE {pair}) AS shadow_q,
        min(diff_score) FILTER (WHERE agree IS NOT NULL) AS diff_min,
        {d.quantile("diff_score", 0.99)} FILTER (WHERE agree IS NOT NULL) AS diff_p99,
        max(diff_score) FILTER (WHERE agree IS NOT NULL) AS diff_max
    FROM scope GROUP BY route, shadow ORDER BY route, shadow"""
    return Query("volume, outcomes, agreement, latency", sql)


def agreement_over_time(bucket_seconds: int, d: Dialect = DUCKDB) -> Query:
    sql = f"""
    SELECT route, shadow, CAST(floor({d.epoch_us("ts")} / ?) AS BIGINT) AS bucket,
           count(*) AS compared, count(*) FILTER (WHERE agree) AS agreed
    FROM scope WHERE agree IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
    return Query("agreement over time", sql, (bucket_seconds * 1_000_000,))


def latency_histogram(d: Dialect = DUCKDB) -> Query:
    """Both sides' latencies on a log scale (``LATENCY_BUCKETS_PER_DOUBLING`` buckets per
    doubling), one scan with grouping sets."""
    k = LATENCY_BUCKETS_PER_DOUBLING
    sql = f"""
    SELECT route, shadow,
           CASE WHEN grouping(pb) = 0 THEN 'production' ELSE 'shadow' END AS side,
           coalesce(pb, sb) AS bucket, count(*) AS n
    FROM (SELECT route, shadow,
                 CAST(floor(log2(greatest(prod_latency_ms, 0.01)) * {k}) AS INTEGER) AS pb,
                 CAST(floor(log2(greatest(shadow_latency_ms, 0.01)) * {k}) AS INTEGER) AS sb
          FROM scope WHERE {latency_pair(d)})
    GROUP BY GROUPING SETS ((route, shadow, pb), (route, shadow, sb))
    ORDER BY 1, 2, 3, 4"""
    return Query("latency distributions", sql)


def _pair_table(
    name: str, rows: Sequence[tuple[str, str, object]]
) -> tuple[str, tuple[object, ...]]:
    """An inline ``(route, shadow, value)`` table and its parameters."""
    values = ", ".join("(?, ?, ?)" for _ in rows)
    params = tuple(item for row in rows for item in row)
    return f"{name}(route, shadow, v) AS (VALUES {values})", params


def hash_thresholds(
    counts: dict[tuple[str, str], int], per_pair: int
) -> list[tuple[str, str, int]]:
    """Hash thresholds (out of ``HASH_MODULUS``) that let about ``per_pair`` plus a safety
    margin through for each pair, so the bottom-k selection sorts few rows."""
    out = []
    for (route, shadow), count in sorted(counts.items()):
        if count <= 0:
            continue
        wanted = per_pair + 5 * math.sqrt(per_pair) + 100
        share = min(1.0, wanted / count)
        out.append((route, shadow, math.ceil(share * HASH_MODULUS)))
    return out


def latency_sample(
    thresholds: Sequence[tuple[str, str, int]], per_pair: int, d: Dialect = DUCKDB
) -> Query:
    """Per-request latency pairs: a deterministic hash sample, at most ``per_pair`` per pair.

    Rows pass when their request id's hash (``Dialect.hash_bucket``, the same on every
    engine) mod 10^6 is under the pair's threshold (chosen so about twice ``per_pair``
    pass), so the window only ever sorts a small set; and the same requests are sampled
    for every shadow. The order is total (a retried request's rows are told apart by
    ``ts`` and latencies), so every engine returns the same rows in the same order.
    """
    table, params = _pair_table("thresholds", thresholds)
    order = "h, request_id, ts, prod_latency_ms, shadow_latency_ms"
    sql = f"""
    WITH {table},
    hashed AS (
        SELECT s.route, s.shadow, s.request_id, s.ts, s.prod_latency_ms,
               s.shadow_latency_ms, {d.hash_bucket("s.request_id")} AS h, t.v
        FROM scope s JOIN thresholds t ON s.route = t.route AND s.shadow = t.shadow
        WHERE {latency_pair(d)}),
    ranked AS (
        SELECT *, row_number() OVER (PARTITION BY route, shadow ORDER BY {order}) AS pick
        FROM hashed WHERE h % {HASH_MODULUS} < v)
    SELECT route, shadow, prod_latency_ms, shadow_latency_ms
    FROM ranked WHERE pick <= ?
    ORDER BY route, shadow, {order}"""
    return Query("latency sample", sql, (*params, per_pair))


def diff_histogram(
    ranges: Sequence[tuple[str, str, float, float]], bins: int, d: Dialect = DUCKDB
) -> Query:
    """``diff_score`` histogram per pair; ``ranges`` gives each pair's (low, bin width).
    Values past the last bin land in it (an overflow bin), and so do infinity and NaN,
    decided before ``floor``: Spark's floor of infinity overflows (an error under ANSI
    SQL) and of NaN gives 0, where DuckDB's keeps both."""
    values = ", ".join("(?, ?, ?, ?)" for _ in ranges)
    params = tuple(item for row in ranges for item in row)
    sql = f"""
    WITH ranges(route, shadow, lo, width) AS (VALUES {values})
    SELECT s.route, s.shadow,
           CASE WHEN isnan(s.diff_score) OR (s.diff_score - r.lo) / r.width >= ? THEN ?
                WHEN s.diff_score < r.lo THEN 0
                ELSE CAST(floor((s.diff_score - r.lo) / r.width) AS INTEGER)
           END AS bin,
           count(*) AS n
    FROM scope s JOIN ranges r ON s.route = r.route AND s.shadow = r.shadow
    WHERE s.agree IS NOT NULL AND s.diff_score IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
    return Query("diff score histograms", sql, (*params, bins - 1, bins - 1))


def confusion(top_classes: int, d: Dialect = DUCKDB) -> Query:
    """Production class x shadow class counts for class comparators, the ``top_classes``
    most frequent classes of each pair kept and the rest grouped as ``(other)``.

    A class's volume counts both sides (a cell adds to its production class and to its
    shadow class). The cells are read once: each is paired with its two classes, ranked
    by volume (ties by name) with window functions, so an engine that does not keep a
    common table expression's result (Spark) classifies every row once, not three times."""
    sql = f"""
    WITH cells AS (
        SELECT route, shadow, coalesce(sp_class(prod_prediction), '(none)') AS p,
               coalesce(sp_class(shadow_prediction), '(none)') AS s, count(*) AS n
        FROM scope WHERE agree IS NOT NULL AND {KINDS} IN {CLASS_KINDS} GROUP BY 1, 2, 3, 4),
    sides AS (
        SELECT route, shadow, p, s, n, {d.either("p", "s")} AS c FROM cells),
    volumes AS (
        SELECT *, sum(n) OVER (PARTITION BY route, shadow, c) AS volume FROM sides),
    ranked AS (
        SELECT *, dense_rank() OVER (PARTITION BY route, shadow ORDER BY volume DESC, c)
                      AS place
        FROM volumes),
    placed AS (
        SELECT route, shadow, p, s, n, max(CASE WHEN c = p THEN place END) AS p_place,
               max(CASE WHEN c = s THEN place END) AS s_place
        FROM ranked GROUP BY route, shadow, p, s, n)
    SELECT route, shadow, CASE WHEN p_place <= ? THEN p ELSE '(other)' END AS p,
           CASE WHEN s_place <= ? THEN s ELSE '(other)' END AS s, sum(n) AS n
    FROM placed GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""
    return Query("confusion matrices", sql, (top_classes, top_classes))


def top_disagreements(per_pair: int, d: Dialect = DUCKDB) -> Query:
    """The most different disagreeing pairs, without bodies (largest ``diff_score``
    first; ties: the larger request id, then the later ``ts``)."""
    return Query("top disagreements", d.top_examples("agree = false"), (per_pair,))


def bodies(keys: Sequence[tuple[str, str, str]], d: Dialect = DUCKDB) -> Query:
    """The bodies of the handful of example rows: the only query that reads them. A
    retried request has several rows; sorted by ``ts``, the caller keeps the last."""
    table, params = _pair_table("wanted", keys)
    sql = f"""
    WITH {table}
    SELECT s.route, s.shadow, s.request_id, s.request_body, s.prod_body, s.shadow_body
    FROM scope s JOIN wanted w
      ON s.route = w.route AND s.shadow = w.shadow AND s.request_id = w.v
    WHERE s.request_id IN (SELECT v FROM wanted)
    ORDER BY s.route, s.shadow, s.request_id, s.ts"""
    return Query("example bodies", sql, params)


def segments(path: jsonpath.JsonPath, top_n: int, d: Dialect = DUCKDB) -> Query:
    """Agreement per value of a JSON path into the request body, top ``top_n`` values
    per pair by volume, the rest grouped as ``(other)``. A wildcard path selects a list:
    a request whose values are all equal joins that value, else ``(mixed)``."""
    extract, params, wildcard = d.segment(path)
    value = "v"
    if wildcard:
        value = """CASE coalesce(len(list_distinct(v)), 0) WHEN 0 THEN NULL
                   WHEN 1 THEN list_distinct(v)[1] ELSE '(mixed)' END"""
    sql = f"""
    WITH extracted AS (
        SELECT route, shadow, agree, {extract} AS v
        FROM scope),
    seg AS (
        SELECT route, shadow, coalesce({value}, '(missing)') AS segment,
               count(*) AS rows, count(agree) AS compared, count(*) FILTER (WHERE agree) AS agreed
        FROM extracted GROUP BY 1, 2, 3),
    ranked AS (
        SELECT *, row_number() OVER (PARTITION BY route, shadow
                                     ORDER BY rows DESC, segment) AS rank
        FROM seg)
    SELECT route, shadow, CASE WHEN rank <= ? THEN segment ELSE '(other)' END AS segment,
           sum(rows) AS rows, sum(compared) AS compared, sum(agreed) AS agreed,
           min(rank) AS rank
    FROM ranked GROUP BY 1, 2, 3 ORDER BY route, shadow, rank"""
    return Query("segments", sql, (*params, top_n))


def labeled_pairs(d: Dialect = DUCKDB) -> Query:
    """Ground-truth aggregates per pair over the requests with a label and both answers:
    classification counts (both right, McNemar's discordant cells) and regression sums,
    plus what the labels look like so the caller can tell the task.

    A request counts once: a client retry keeps its ``X-Request-Id``, so one request can
    have several rows per shadow; the first answered row (by ``ts``) is kept and the
    others are counted as ``duplicates``. The paired error differences' exact sum and sum
    of squares (``d_sum``, ``d_sq``) feed the paired t test of the MAE difference, over
    every labelled request."""
    sql = f"""
    WITH matched AS (
        SELECT s.route, s.shadow, l.label,
               sp_class(l.label) AS lc, sp_class(s.prod_prediction) AS pc,
               sp_class(s.shadow_prediction) AS sc,
               sp_number(l.label) AS ln, sp_number(s.prod_prediction) AS pn,
               sp_number(s.shadow_prediction) AS sn,
               count(*) OVER (PARTITION BY s.route, s.shadow, s.request_id) AS copies,
               row_number() OVER (PARTITION BY s.route, s.shadow, s.request_id
                                  ORDER BY s.ts, s.prod_prediction, s.shadow_prediction)
                   AS copy
        FROM scope s JOIN labels l ON s.request_id = l.request_id
        WHERE s.prod_prediction IS NOT NULL AND s.shadow_prediction IS NOT NULL),
    joined AS (SELECT * FROM matched WHERE copy = 1),
    scored AS (
        SELECT *, coalesce(pc = lc, false) AS pr, coalesce(sc = lc, false) AS sr,
               abs(pn - ln) AS pe, abs(sn - ln) AS se
        FROM joined)
    SELECT route, shadow, count(*) AS n,
           sum(copies - 1) AS duplicates,
           count(ln) AS numeric_labels,
           count(*) FILTER (WHERE ln <> round(ln)) AS fractional_labels,
           count(*) FILTER (WHERE pr) AS prod_right,
           count(*) FILTER (WHERE sr) AS shadow_right,
           count(*) FILTER (WHERE pr AND NOT sr) AS b,
           count(*) FILTER (WHERE sr AND NOT pr) AS c,
           count(*) FILTER (WHERE pe IS NOT NULL AND se IS NOT NULL) AS n_reg,
           sum(pe) FILTER (WHERE se IS NOT NULL) AS prod_abs,
           sum(pe * pe) FILTER (WHERE se IS NOT NULL) AS prod_sq,
           sum(se) FILTER (WHERE pe IS NOT NULL) AS shadow_abs,
           sum(se * se) FILTER (WHERE pe IS NOT NULL) AS shadow_sq,
           sum({exact("se - pe", d)}) AS d_sum,
           sum({exact("(se - pe) * (se - pe)", d)}) AS d_sq
    FROM scored GROUP BY route, shadow ORDER BY route, shadow"""
    return Query("ground truth", sql)


def probe_file(path_source: str) -> Query:
    """Decode every column of one file: how a corrupt file that DuckDB did not name in
    its error is found."""
    return Query("checking file", f"SELECT max(hash(t)) FROM {path_source} t")
