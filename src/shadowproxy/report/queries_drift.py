"""The report's SQL for the Drift section: the monitor's watched answers, production's
and each shadow's (see ``queries`` for the conventions)."""

from __future__ import annotations

from shadowproxy.report.queries import literal

DRIFT_COLUMNS = (
    ("prod_violations", "VARCHAR[]"),
    ("shadow_violations", "VARCHAR[]"),
    ("request_violations", "VARCHAR[]"),
    ("model_version", "VARCHAR"),
)
"""The monitor's pair columns, added as nulls to recordings made before them."""


def drift_answers(route: str, limit: int, with_telemetry: bool) -> str:
    """Production's watched answers of one route: telemetry rows plus one row per
    request from the pairs; at most ``limit`` (a seeded reservoir sample beyond)."""
    pairs = (
        "SELECT DISTINCT ON (request_id) request_id, epoch_ms(ts) / 1000.0 AS t, "
        "request_body, prod_prediction AS prediction, model_version, prod_violations AS "
        f"violations, request_violations FROM drift_pairs WHERE route = {literal(route)} "
        "AND prod_chaos IS NULL"
    )
    union = pairs
    if with_telemetry:
        union += (
            " UNION ALL SELECT request_id, epoch_ms(ts) / 1000.0 AS t, request_body, prediction, "
            "model_version, violations, request_violations FROM telemetry_raw "
            f"WHERE route = {literal(route)} AND prod_chaos IS NULL"
        )
    return (
        f"SELECT * FROM ({union}) USING SAMPLE reservoir({int(limit)} ROWS) REPEATABLE (7) "
        "ORDER BY t, request_id"
    )


def drift_shadow_answers(route: str) -> str:
    """Each shadow's answered copies on one route, with the invariants they broke."""
    return (
        "SELECT shadow, request_id, epoch_ms(ts) / 1000.0 AS t, shadow_violations "
        f"FROM drift_pairs WHERE route = {literal(route)} AND shadow_outcome = 'ok' "
        "AND chaos IS NULL AND shadow_violations IS NOT NULL ORDER BY t, request_id"
    )
