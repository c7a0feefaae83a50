"""The report's SQL about the whole run rather than one pair: the chaos checks and the
experiments' arms, units and outcomes (see ``queries`` for the conventions)."""

from __future__ import annotations

from shadowproxy.report.dialect import DUCKDB, Dialect
from shadowproxy.report.queries import CLEAN, Query


def chaos_excluded() -> Query:
    """Rows per pair left out of the figures because they carry an injected fault."""
    sql = f"""
    SELECT route, shadow, count(*) AS excluded
    FROM scope_all WHERE NOT ({CLEAN}) GROUP BY route, shadow ORDER BY route, shadow"""
    return Query("rows with injected faults", sql)


def chaos_checks(d: Dialect = DUCKDB) -> Query:
    """Per (route, target, fault word, parameter): the injected rows and what the
    monitoring saw of them, next to the same target's rows without faults.

    A marker holds one or more words (``delay_ms=500,corrupt_prediction``), so a row
    counts once per fault it carries. Production's faults are counted per request, not
    per (request, shadow) row: every shadow's row of a request repeats them. Baselines:
    a shadow's rows without any fault; production's requests without a production fault.
    """
    sql = f"""
    WITH words AS (
        SELECT route, 'shadow' AS side, shadow, shadow_latency_ms AS latency,
               shadow_status AS status, agree, {d.split_words("chaos")} AS word
        FROM scope_all WHERE chaos IS NOT NULL
        UNION ALL
        SELECT route, 'production', NULL, prod_latency_ms, prod_status, NULL,
               {d.split_words("prod_chaos")}
        FROM (SELECT DISTINCT route, request_id, prod_latency_ms, prod_status, prod_chaos
              FROM scope_all WHERE prod_chaos IS NOT NULL)),
    injected AS (
        SELECT route, side, shadow, split_part(word, '=', 1) AS fault,
               nullif(split_part(word, '=', 2), '') AS param, count(*) AS rows,
               count(latency) AS timed, {d.quantile("latency", 0.5)} AS latency_p50,
               count(*) FILTER (WHERE status = TRY_CAST(split_part(word, '=', 2) AS INTEGER))
                   AS with_status,
               count(agree) AS compared, count(*) FILTER (WHERE NOT agree) AS disagreed
        FROM words GROUP BY 1, 2, 3, 4, 5),
    clean AS (
        SELECT route, 'shadow' AS side, shadow, shadow_latency_ms AS latency,
               shadow_status AS status, agree
        FROM scope
        UNION ALL
        SELECT route, 'production', NULL, prod_latency_ms, prod_status, NULL
        FROM (SELECT DISTINCT route, request_id, prod_latency_ms, prod_status
              FROM scope_all WHERE prod_chaos IS NULL)),
    baseline AS (
        SELECT route, side, shadow, count(*) AS rows, {d.quantile("latency", 0.5)} AS latency_p50,
               count(agree) AS compared, count(*) FILTER (WHERE NOT agree) AS disagreed
        FROM clean GROUP BY 1, 2, 3),
    statuses AS (
        SELECT route, side, shadow, status, count(*) AS n FROM clean GROUP BY 1, 2, 3, 4)
    SELECT i.route, i.side, i.shadow, i.fault, i.param, i.rows, i.timed, i.latency_p50,
           i.with_status, i.compared, i.disagreed,
           coalesce(b.rows, 0) AS clean_rows, b.latency_p50 AS clean_latency_p50,
           coalesce(b.compared, 0) AS clean_compared, coalesce(b.disagreed, 0) AS clean_disagreed,
           coalesce(s.n, 0) AS clean_with_status
    FROM injected i
    LEFT JOIN baseline b
      ON b.route = i.route AND b.side = i.side AND b.shadow IS NOT DISTINCT FROM i.shadow
    LEFT JOIN statuses s
      ON s.route = i.route AND s.side = i.side AND s.shadow IS NOT DISTINCT FROM i.shadow
     AND s.status = TRY_CAST(i.param AS INTEGER) AND i.fault = 'abort_status'
    ORDER BY i.route, i.side DESC, i.shadow NULLS LAST, i.fault, i.param NULLS LAST"""
    return Query("chaos checks", sql)


# --- experiments ---------------------------------------------------------------------


def _no_labels(d: Dialect) -> str:
    null = f"CAST(NULL AS {d.text})"
    return f"(SELECT {null} AS request_id, {null} AS label WHERE FALSE)"


def _outcomes(labels: bool, d: Dialect) -> str:
    """One row per exposure without injected faults, with its outcome (or NULL): the
    newest feedback of its request, as the ``labels`` table keeps it."""
    source = "labels" if labels else _no_labels(d)
    return f"""outcomes AS (
        SELECT e.route, e.arm, e.ts, e.share, e.unit, e.request_id, l.label,
               sp_outcome(l.label) AS value
        FROM exposures e LEFT JOIN {source} l ON e.request_id = l.request_id
        WHERE e.chaos IS NULL)"""


def _units(labels: bool, d: Dialect) -> str:
    """``outcomes`` and ``units``: one row per assignment unit of the routes whose
    exposures carry units (sticky assignment by a key), with the arms it was seen in,
    its requests, the mean of its outcomes and its success rate (outcomes other than 0
    count as successes). A request without a unit was assigned at random, so it is a
    unit of its own."""
    return f"""{_outcomes(labels, d)},
    keyed AS (
        SELECT route, arm, coalesce(unit, 'request:' || request_id) AS unit, value
        FROM outcomes
        WHERE route IN (SELECT route FROM outcomes GROUP BY route HAVING count(unit) > 0)),
    units AS (
        SELECT route, unit, min(arm) AS arm, min(arm) <> max(arm) AS crossed,
               count(*) AS requests, avg(value) AS mean, avg(CAST(value <> 0 AS DOUBLE)) AS rate
        FROM keyed GROUP BY route, unit)"""


def experiment_arms(labels: bool, d: Dialect = DUCKDB) -> Query:
    """Per (route, arm): exposures, outcomes and their sums, and the configured share
    (the newest, with its range over the window: a canary's share moves by steps);
    ``with_unit`` counts the exposures that name their assignment unit."""
    sql = f"""
    WITH {_outcomes(labels, d)}
    SELECT route, arm, count(*) AS exposed, count(value) AS with_outcome,
           count(label) - count(value) AS ignored, avg(value) AS mean,
           coalesce(var_samp(value), 0.0) AS variance,
           count(*) FILTER (WHERE value <> 0) AS successes,
           {d.arg_max("share", "ts")} FILTER (WHERE share IS NOT NULL) AS share,
           min(share) AS share_min, max(share) AS share_max, count(share) AS with_share,
           count(unit) AS with_unit
    FROM outcomes GROUP BY route, arm ORDER BY route, arm"""
    return Query("experiment arms", sql)


def experiment_units(labels: bool, d: Dialect = DUCKDB) -> Query:
    """Per (route, arm) of the routes with units: the units seen in that arm only, those
    with an outcome, their requests, and the mean and variance of the units' means and
    success rates; ``successes`` counts units whose every outcome is a success and
    ``mixed`` those with both kinds. ``several_arms`` counts the units seen in more than
    one arm (each under the first of its arms by name): they are in no other figure."""
    single = "FILTER (WHERE NOT crossed)"
    sql = f"""
    WITH {_units(labels, d)}
    SELECT route, arm, count(*) {single} AS units, count(mean) {single} AS with_outcome,
           coalesce(sum(requests) {single}, 0) AS requests,
           avg(mean) {single} AS mean, coalesce(var_samp(mean) {single}, 0.0) AS variance,
           avg(rate) {single} AS rate, coalesce(var_samp(rate) {single}, 0.0) AS rate_variance,
           count(*) FILTER (WHERE NOT crossed AND rate = 1) AS successes,
           count(*) FILTER (WHERE NOT crossed AND rate > 0 AND rate < 1) AS mixed,
           count(*) FILTER (WHERE crossed) AS several_arms
    FROM units GROUP BY route, arm ORDER BY route, arm"""
    return Query("experiment units", sql)


def experiment_values(labels: bool, max_distinct: int | None, d: Dialect = DUCKDB) -> Query:
    """Per (route, arm, value): how often each outcome value occurs, for routes with at
    most ``max_distinct`` distinct values (all routes when None): what detects binary
    and ordinal outcomes and what the Mann-Whitney test counts."""
    limit = "" if max_distinct is None else f"WHERE distinct_values <= {int(max_distinct)}"
    sql = f"""
    WITH {_outcomes(labels, d)},
    per_route AS (
        SELECT route, count(DISTINCT value) AS distinct_values
        FROM outcomes WHERE value IS NOT NULL GROUP BY route)
    SELECT o.route, o.arm, o.value, count(*) AS n
    FROM outcomes o JOIN per_route r ON o.route = r.route
    WHERE o.value IS NOT NULL AND o.route IN (SELECT route FROM per_route {limit})
    GROUP BY o.route, o.arm, o.value ORDER BY o.route, o.arm, o.value"""
    return Query("experiment outcome values", sql)


def experiment_unit_values(labels: bool, max_distinct: int | None, d: Dialect = DUCKDB) -> Query:
    """Per (route, arm, value): how many units (seen in one arm) have that mean outcome,
    for the routes with units whose requests' outcomes take at most ``max_distinct``
    distinct values (all when None): what the Mann-Whitney test counts per unit."""
    limit = "" if max_distinct is None else f"HAVING count(DISTINCT value) <= {int(max_distinct)}"
    sql = f"""
    WITH {_units(labels, d)}
    SELECT route, arm, mean AS value, count(*) AS n
    FROM units
    WHERE NOT crossed AND mean IS NOT NULL
      AND route IN (SELECT route FROM outcomes WHERE value IS NOT NULL GROUP BY route {limit})
    GROUP BY route, arm, mean ORDER BY route, arm, mean"""
    return Query("experiment outcome values per unit", sql)
