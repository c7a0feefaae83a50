"""The few SQL fragments that DuckDB and Spark spell differently, rendered from one place.

Each query in ``queries``, ``queries_runs`` and ``groundtruth`` is written once; where the
two engines disagree on a spelling it asks a :class:`Dialect` for the fragment:

==================  ================================  =====================================
fragment            DuckDB                            Spark (4.x)
==================  ================================  =====================================
finite              ``isfinite(x)``                   ``NOT isnan(x) AND abs(x) < inf``
exact quantiles     ``quantile_cont(x, [..])``        ``percentile(x, array(..))``
epoch microseconds  ``epoch_us(ts)``                  ``unix_micros(ts)``
newest value        ``arg_max(x, ts)``                ``max_by(x, ts)``
timestamp literal   ``TIMESTAMPTZ '..'``              ``TIMESTAMP '..'``
words of a list     ``unnest(string_split(x, ','))``  ``explode(split(x, ','))``
two rows from one   ``unnest([a, b])``                ``explode(array(a, b))``
body as text        ``decode(b)`` in ``try(..)``      ``CAST(b AS STRING)`` if valid UTF-8
segment value       ``json_extract_string``           ``try_variant_get(.., 'string')``
top examples        ``max_by(struct, key, n)``        ``row_number()`` window, ``collect_list``
``sp_*`` functions  DuckDB macros (``queries``)       SQL functions (``SPARK_FUNCTIONS``)
==================  ================================  =====================================

Everything else (``FILTER`` clauses, grouping sets, window functions, ``DECIMAL``
sums, ``md5``) is common SQL both accept. What must come out the same on both is
written so that it does: the sampling hash is :meth:`Dialect.hash_bucket` (the first 60
bits of the MD5 of the text, where DuckDB's ``hash()`` has no Spark counterpart), and
every query whose row order reaches a statistic has a total ``ORDER BY``, with
``NULLS LAST`` spelled out where a key can be null (Spark sorts nulls first).

Pure: this module renders text and opens nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from shadowproxy.compare import jsonpath
from shadowproxy.report.options import ReportInputError, duckdb_path


class Dialect:
    """DuckDB's spelling (the embedded default); :class:`SparkDialect` overrides it."""

    name = "duckdb"
    text = "VARCHAR"
    """The name of the text type in casts."""

    def finite(self, x: str) -> str:
        """True for a finite number; NULL for NULL (as DuckDB's ``isfinite``)."""
        return f"isfinite({x})"

    def quantiles(self, x: str, qs: Sequence[float]) -> str:
        """Exact quantiles (linear interpolation between order statistics), as a list."""
        return f"quantile_cont({x}, [{', '.join(repr(float(q)) for q in qs)}])"

    def quantile(self, x: str, q: float) -> str:
        return f"quantile_cont({x}, {float(q)!r})"

    def epoch_us(self, ts: str) -> str:
        return f"epoch_us({ts})"

    def hash_bucket(self, text: str) -> str:
        """A 60-bit non-negative integer from the MD5 of ``text``: the same number on
        every engine, so a hash sample keeps the same requests."""
        return f"CAST(('0x' || substr(md5({text}), 1, 15)) AS BIGINT)"

    def arg_max(self, x: str, y: str) -> str:
        return f"arg_max({x}, {y})"

    def timestamp(self, iso: str) -> str:
        """A literal instant from an ISO text with its offset (already quoted)."""
        return f"TIMESTAMPTZ {iso}"

    def split_words(self, x: str) -> str:
        """One row per comma-separated word of ``x`` (in a select list)."""
        return f"unnest(string_split({x}, ','))"

    def either(self, a: str, b: str) -> str:
        """Two rows per row, one with ``a`` and one with ``b`` (in a select list)."""
        return f"unnest([{a}, {b}])"

    def create_table(self, name: str, select: str) -> list[str]:
        """Statements that materialise ``select`` as ``name`` for the session."""
        return [f"CREATE OR REPLACE TEMP TABLE {name} AS {select}"]

    def segment(self, path: jsonpath.JsonPath) -> tuple[str, str, bool]:
        """The expression extracting a row's segment value from its request body (text,
        or for a wildcard path a list of texts, which the query folds), its one
        parameter, and whether the path has a wildcard."""
        duck, wildcard = duckdb_path(path)
        return "try(json_extract_string(decode(request_body), ?))", duck, wildcard

    def top_examples(self, where: str) -> str:
        """Per pair, the ``?`` rows with the largest ``diff_score`` (ties: the larger
        request id, then the later ``ts``) as a list of structs named ``examples``.
        DuckDB's ``max_by(x, key, n)`` keeps a running top-n: no sort of all rows."""
        return f"""
    SELECT route, shadow,
           max_by(struct_pack(request_id, ts, method, path, prod_prediction,
                              shadow_prediction, diff_score, compare_detail),
                  struct_pack(d := coalesce(diff_score, -1e308), r := request_id, t := ts),
                  ?) AS examples
    FROM scope WHERE {where} GROUP BY route, shadow ORDER BY route, shadow"""


class SparkDialect(Dialect):
    """Spark SQL (4.x: variant JSON functions and SQL functions are needed)."""

    name = "spark"
    text = "STRING"

    def finite(self, x: str) -> str:
        # isnan(NULL) is false, and abs(NULL) < inf is NULL: NULL stays NULL.
        return f"(NOT isnan({x}) AND abs({x}) < CAST('Infinity' AS DOUBLE))"

    def quantiles(self, x: str, qs: Sequence[float]) -> str:
        return f"percentile({x}, array({', '.join(f'{float(q)!r}D' for q in qs)}))"

    def quantile(self, x: str, q: float) -> str:
        return f"percentile({x}, {float(q)!r}D)"

    def epoch_us(self, ts: str) -> str:
        return f"unix_micros({ts})"

    def hash_bucket(self, text: str) -> str:
        return f"CAST(conv(substr(md5({text}), 1, 15), 16, 10) AS BIGINT)"

    def arg_max(self, x: str, y: str) -> str:
        return f"max_by({x}, {y})"

    def timestamp(self, iso: str) -> str:
        return f"TIMESTAMP {iso}"

    def split_words(self, x: str) -> str:
        return f"explode(split({x}, ','))"

    def either(self, a: str, b: str) -> str:
        return f"explode(array({a}, {b}))"

    def create_table(self, name: str, select: str) -> list[str]:
        return [f"CREATE OR REPLACE TEMP VIEW {name} AS {select}", f"CACHE TABLE {name}"]

    def segment(self, path: jsonpath.JsonPath) -> tuple[str, str, bool]:
        return (
            (
                "try_variant_get(try_parse_json(CASE WHEN is_valid_utf8(CAST(request_body AS "
                "STRING)) THEN CAST(request_body AS STRING) END), ?, 'string')"
            ),
            spark_path(path),
            False,
        )

    def top_examples(self, where: str) -> str:
        return f"""
    SELECT route, shadow,
           collect_list(named_struct('request_id', request_id, 'ts', ts, 'method', method,
                                     'path', path, 'prod_prediction', prod_prediction,
                                     'shadow_prediction', shadow_prediction,
                                     'diff_score', diff_score,
                                     'compare_detail', compare_detail)) AS examples
    FROM (SELECT *, row_number() OVER (
                        PARTITION BY route, shadow
                        ORDER BY coalesce(diff_score, -1e308) DESC, request_id DESC, ts DESC)
                    AS top_rank
          FROM scope WHERE {where})
    WHERE top_rank <= ? GROUP BY route, shadow ORDER BY route, shadow"""


DUCKDB = Dialect()
SPARK = SparkDialect()


def spark_path(path: jsonpath.JsonPath) -> str:
    """Our JSON path in the syntax of Spark's ``variant_get``, which has no wildcards and
    no negative indexes: such a path is refused with what to do instead."""
    parts = ["$"]
    for step in path.steps:
        if isinstance(step, int) and step >= 0:
            parts.append(f"[{step}]")
        elif isinstance(step, str) and "'" not in step and "\\" not in step:
            parts.append(f"['{step}']")
        else:
            raise ReportInputError(
                f"--segment {path.text}: --engine spark reads plain keys and non-negative "
                "indexes only (no wildcard, negative index, quote or backslash in a key); "
                "use --engine duckdb for this path"
            )
    return "".join(parts)


SPARK_FUNCTIONS = (
    # Spark expands a SQL function's body with its arguments written out at every use,
    # so each function names an expensive argument as few times as it can, and passes
    # what it derives once to a helper as a parameter.
    #
    # The JSON kind of a parsed value, in DuckDB's json_type names (numbers: NUMBER).
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_kind(v VARIANT) RETURNS STRING RETURN
       CASE substr(to_json(v), 1, 1)
            WHEN '"' THEN 'VARCHAR' WHEN '[' THEN 'ARRAY' WHEN '{' THEN 'OBJECT'
            WHEN 't' THEN 'BOOLEAN' WHEN 'f' THEN 'BOOLEAN' WHEN 'n' THEN 'NULL'
            ELSE 'NUMBER' END""",
    # How many one-element lists wrap the value (at most two, as sp_unwrap peels them).
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_unwrap_depth(a ARRAY<VARIANT>) RETURNS INT
       RETURN CASE WHEN array_size(a) = 1 THEN
                   CASE WHEN array_size(try_variant_get(a[0], '$', 'array<variant>')) = 1
                        THEN 2 ELSE 1 END
              ELSE 0 END""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_unwrap_at(v VARIANT) RETURNS VARIANT RETURN
       CASE sp_unwrap_depth(try_variant_get(v, '$', 'array<variant>'))
            WHEN 0 THEN v WHEN 1 THEN try_variant_get(v, '$[0]', 'variant')
            ELSE try_variant_get(v, '$[0][0]', 'variant') END""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_unwrap(j STRING) RETURNS VARIANT RETURN
       sp_unwrap_at(try_parse_json(j))""",
    # DuckDB's list_position(l, list_max(l)) - 1 on TRY_CAST(u AS DOUBLE[]): the first
    # largest element; when no element is a number, the first element.
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_argmax(a ARRAY<DOUBLE>) RETURNS STRING RETURN
       CASE WHEN array_size(a) = 0 THEN NULL
            WHEN array_max(a) IS NULL THEN '0'
            ELSE CAST(array_position(a, array_max(a)) - 1 AS STRING) END""",
    # Python's repr of a double (DuckDB's CAST(DOUBLE AS VARCHAR)) from Java's
    # Double.toString (Spark's): the same shortest digits, laid out as repr does:
    # positional when the point falls within 16 digits, else d.ddde+XX.
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_repr_parts(sign STRING, d STRING, pos INT)
       RETURNS STRING RETURN sign || CASE
            WHEN pos > -4 AND pos <= 16 THEN CASE
                 WHEN pos <= 0 THEN '0.' || repeat('0', -pos) || d
                 WHEN length(d) <= pos THEN d || repeat('0', pos - length(d)) || '.0'
                 ELSE substr(d, 1, pos) || '.' || substr(d, pos + 1) END
            ELSE substr(d, 1, 1) || CASE WHEN length(d) > 1 THEN '.' || substr(d, 2) ELSE '' END
                 || 'e' || CASE WHEN pos - 1 < 0 THEN '-' ELSE '+' END
                 || CASE WHEN abs(pos - 1) < 10 THEN '0' ELSE '' END
                 || CAST(abs(pos - 1) AS STRING) END""",
    # The digits without leading zeros (d) and where the point falls in them (pos).
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_repr_digits(sign STRING, i STRING, f STRING,
       e INT) RETURNS STRING RETURN
       sp_repr_parts(sign, regexp_replace(regexp_replace(i || f, '^0+', ''), '0+$', ''),
                     length(i) + e
                     - (length(i || f) - length(regexp_replace(i || f, '^0+', ''))))""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_repr_java(s STRING) RETURNS STRING RETURN
       sp_repr_digits(CASE WHEN s LIKE '-%' THEN '-' ELSE '' END,
                      regexp_extract(s, '^-?([0-9]+)', 1), regexp_extract(s, '[.]([0-9]+)', 1),
                      coalesce(try_cast(regexp_extract(s, 'E(-?[0-9]+)$', 1) AS INT), 0))""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_number_text(x DOUBLE) RETURNS STRING RETURN
       CASE WHEN abs(x) < 1e15 AND x = floor(x) THEN CAST(CAST(x AS BIGINT) AS STRING)
            ELSE sp_repr_java(CAST(x AS STRING)) END""",
    # An object is its text: as written when it is the whole value (DuckDB keeps the
    # text of j::JSON), re-printed when it came out of a list. A number goes through
    # its text (t), which Spark prints exactly for integers and decimals.
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_class_kind(k STRING, u VARIANT, t STRING,
       j STRING) RETURNS STRING RETURN
       CASE k
            WHEN 'VARCHAR' THEN t WHEN 'BOOLEAN' THEN t
            WHEN 'NULL' THEN NULL
            WHEN 'ARRAY' THEN sp_argmax(try_variant_get(u, '$', 'array<double>'))
            WHEN 'OBJECT' THEN CASE WHEN sp_kind(try_parse_json(j)) = 'OBJECT' THEN j
                                    ELSE to_json(u) END
            ELSE sp_number_text(try_cast(t AS DOUBLE)) END""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_class_of(u VARIANT, j STRING) RETURNS STRING
       RETURN sp_class_kind(sp_kind(u), u, try_variant_get(u, '$', 'string'), j)""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_class(j STRING) RETURNS STRING RETURN
       sp_class_of(sp_unwrap(j), j)""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_number_of(u VARIANT) RETURNS DOUBLE RETURN
       CASE WHEN sp_kind(u) = 'NUMBER' THEN try_variant_get(u, '$', 'double') END""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_number(j STRING) RETURNS DOUBLE RETURN
       sp_number_of(sp_unwrap(j))""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_outcome_of(v VARIANT, j STRING) RETURNS DOUBLE
       RETURN CASE WHEN v IS NULL THEN NULL
                   WHEN sp_kind(v) = 'BOOLEAN'
                        THEN CASE trim(j) WHEN 'true' THEN 1.0D ELSE 0.0D END
                   ELSE sp_number_of(v) END""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_outcome(j STRING) RETURNS DOUBLE RETURN
       sp_outcome_of(try_parse_json(j), j)""",
    """CREATE OR REPLACE TEMPORARY FUNCTION sp_label_json(t STRING) RETURNS STRING RETURN
       CASE WHEN trim(t) = '' THEN NULL
            WHEN try_parse_json(trim(t)) IS NOT NULL THEN trim(t)
            ELSE to_json(CAST(t AS VARIANT)) END""",
)
"""The ``sp_*`` macros of ``queries.MACROS`` as Spark SQL functions (same names, same
answers on the values the tests list; see the module docstring for what differs)."""
