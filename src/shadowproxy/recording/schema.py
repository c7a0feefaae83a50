"""The recorded form of a pair (and of feedback and exposures), written down once.

``PAIR_COLUMNS`` (names, Arrow types, meanings) -> ``PAIRS_SCHEMA``; ``pair_row`` (a
redacted pair and its comparison -> one row) and ``to_record_batch`` (rows -> Arrow).
Likewise ``FEEDBACK_SCHEMA``/``feedback_row`` and ``EXPOSURES_SCHEMA``/``exposure_row``.
All pure: no I/O, no clock. Only the recorder imports this module (and with it Arrow),
so the serving process stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from shadowproxy.records import Comparison, Exposure, Observation, Pair

# --- the recorded row: the schema, written down once ------------------------------
#
# Readers (pyarrow, DuckDB, Polars, Spark, Trino) see exactly these names and types.
# ``route`` and ``date`` are not stored in the files: they come from the Hive
# partition directories (``pairs/route=<route>/date=<YYYY-MM-DD>/``), so readers that
# merge partition columns into file columns never see a conflict. The same holds for
# ``exposures/route=<route>/date=<YYYY-MM-DD>/``, ``telemetry/route=<route>/date=<YYYY-MM-DD>/``
# and ``feedback/date=<YYYY-MM-DD>/``.


@dataclass(frozen=True, slots=True)
class Column:
    """One recorded column: its name, Arrow type and meaning (stored as field metadata)."""

    name: str
    type: pa.DataType
    doc: str
    nullable: bool = True


def _schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, c.type, c.nullable, metadata={"description": c.doc}) for c in columns]
    )


_TS = pa.timestamp("us", tz="UTC")
_NAMES = pa.list_(pa.string())

PAIR_COLUMNS: tuple[Column, ...] = (
    Column("request_id", pa.string(), "X-Request-Id of the client request (one per request)"),
    Column("ts", _TS, "request arrival at the proxy, UTC, microseconds"),
    Column("shadow", pa.string(), "shadow name from the route config"),
    Column("role", pa.string(), "candidate | baseline, from the shadow config"),
    Column("method", pa.string(), "HTTP method"),
    Column("path", pa.string(), "request path, as received (percent-encoded)"),
    Column("query", pa.string(), "query string without '?', empty when none"),
    Column("prod_status", pa.int32(), "production's HTTP status; null when it did not answer"),
    Column("prod_latency_ms", pa.float64(), "production time until its response ended"),
    Column(
        "prod_error",
        pa.string(),
        "why production failed (502/504 sent), or the client left; null when fine",
    ),
    Column("prod_content_type", pa.string(), "production's Content-Type"),
    Column("shadow_outcome", pa.string(), "ok | error | timeout | dropped | skipped"),
    Column("shadow_status", pa.int32(), "shadow's HTTP status; null without a response"),
    Column("shadow_latency_ms", pa.float64(), "shadow time until its response ended"),
    Column("shadow_error", pa.string(), "why the copy failed or was not sent; null when ok"),
    Column("shadow_content_type", pa.string(), "shadow's Content-Type"),
    Column("request_body", pa.binary(), "request body after redaction, capped"),
    Column("request_body_truncated", pa.bool_(), "request_body is shorter than what was sent"),
    Column("request_body_withheld", pa.bool_(), "body not written: redaction needs JSON"),
    Column("prod_body", pa.binary(), "production's body after redaction, capped"),
    Column("prod_body_truncated", pa.bool_(), "prod_body is shorter than what was sent"),
    Column("prod_body_withheld", pa.bool_(), "body not written: redaction needs JSON"),
    Column("shadow_body", pa.binary(), "shadow's body after redaction, capped"),
    Column("shadow_body_truncated", pa.bool_(), "shadow_body is shorter than what was sent"),
    Column("shadow_body_withheld", pa.bool_(), "body not written: redaction needs JSON"),
    Column("comparator", pa.string(), "comparator that ran; null when none ran"),
    Column("prod_prediction", pa.string(), "production's extracted prediction, JSON text"),
    Column("shadow_prediction", pa.string(), "shadow's extracted prediction, JSON text"),
    Column("agree", pa.bool_(), "the comparator's verdict; null when incomparable"),
    Column("diff_score", pa.float64(), "0 = identical; scale depends on the comparator"),
    Column("compare_detail", pa.string(), "first differing path, or why incomparable"),
    Column("batch_size", pa.int32(), "predictions in a batched answer"),
    Column("batch_agree", pa.int32(), "predictions of the batch that agree"),
    Column("chaos", pa.string(), "faults injected into the shadow copy; null when none"),
    Column("prod_chaos", pa.string(), "faults injected into production's call; null when none"),
    Column("request_content_encoding", pa.string(), "the request's Content-Encoding as sent"),
    Column("prod_content_encoding", pa.string(), "production's Content-Encoding as sent"),
    Column("shadow_content_encoding", pa.string(), "shadow's Content-Encoding as sent"),
    Column(
        "request_body_decode_error",
        pa.string(),
        "why request_body could not be decoded and is stored as sent; null when it was",
    ),
    Column(
        "prod_body_decode_error",
        pa.string(),
        "why prod_body could not be decoded and is stored as sent; null when it was",
    ),
    Column(
        "shadow_body_decode_error",
        pa.string(),
        "why shadow_body could not be decoded and is stored as sent; null when it was",
    ),
    Column(
        "protocol", pa.string(), "http | grpc (gRPC: method POST, path /package.Service/Method)"
    ),
    Column("prod_grpc_status", pa.string(), "gRPC calls: production's status code name (OK, ...)"),
    Column("shadow_grpc_status", pa.string(), "gRPC calls: the shadow's status code name"),
    *(
        Column(name, _NAMES, f"{what}; null unless the route's monitor watched the request")
        for name, what in (
            ("prod_violations", "invariants production's prediction broke"),
            ("shadow_violations", "invariants the shadow's prediction broke"),
            ("request_violations", "invariants the request broke"),
        )
    ),
    Column("model_version", pa.string(), "production's model version (monitor.version.path)"),
)
PAIRS_SCHEMA = _schema(PAIR_COLUMNS)

FEEDBACK_COLUMNS: tuple[Column, ...] = (
    Column("request_id", pa.string(), "the request the label belongs to"),
    Column("label", pa.string(), "ground truth, JSON text"),
    Column("ts", _TS, "when the label was received, UTC, microseconds"),
)
FEEDBACK_SCHEMA = _schema(FEEDBACK_COLUMNS)

EXPOSURE_COLUMNS: tuple[Column, ...] = (
    Column("ts", _TS, "request arrival at the proxy, UTC, microseconds", nullable=False),
    Column("request_id", pa.string(), "X-Request-Id of the client request", nullable=False),
    Column("arm", pa.string(), "the experiment arm that answered the client", nullable=False),
    Column("unit", pa.string(), "hash of the assignment key; null when assignment is random"),
    Column("status", pa.int32(), "HTTP status sent to the client; null when none was sent"),
    Column("latency_ms", pa.float64(), "time until the client's response ended"),
    Column("error", pa.string(), "why the request failed; null when fine"),
    Column("chaos", pa.string(), "faults injected into the answer; null when none"),
    Column("share", pa.float64(), "configured share of the experiment's traffic for this arm"),
)
EXPOSURES_SCHEMA = _schema(EXPOSURE_COLUMNS)

_PAIR_COLUMN = {column.name: column for column in PAIR_COLUMNS}


def _as_in_pairs(*names: str) -> tuple[Column, ...]:
    """Columns telemetry shares with pairs, defined once (same type, doc, nullability)."""
    return tuple(_PAIR_COLUMN[name] for name in names)


TELEMETRY_COLUMNS: tuple[Column, ...] = (
    Column("request_id", pa.string(), "X-Request-Id of the client request", nullable=False),
    Column("ts", _TS, "request arrival at the proxy, UTC, microseconds", nullable=False),
    *_as_in_pairs("method", "path", "query", "prod_status", "prod_latency_ms"),
    Column("prod_error", pa.string(), "why production failed, or the client left"),
    *_as_in_pairs(
        "prod_content_type",
        "request_body",
        "request_body_truncated",
        "request_body_withheld",
        "prod_body",
        "prod_body_truncated",
        "prod_body_withheld",
    ),
    Column("prediction", pa.string(), "production's extracted prediction, JSON text"),
    Column("violations", _NAMES, "invariants production's prediction broke"),
    Column("request_violations", _NAMES, "invariants the request broke"),
    *_as_in_pairs(
        "model_version",
        "prod_chaos",
        "request_content_encoding",
        "prod_content_encoding",
        "request_body_decode_error",
        "prod_body_decode_error",
    ),
)
TELEMETRY_SCHEMA = _schema(TELEMETRY_COLUMNS)
"""``telemetry/``: requests the route's monitor watched and no shadow was sampled for
(production's side only); watched requests with a shadow are in ``pairs/``."""

PARTITION_COLUMNS: tuple[Column, ...] = (
    Column("route", pa.string(), "route name (partition directory)"),
    Column("date", pa.date32(), "UTC date of ts (partition directory)"),
)

_BODIES = ("request_body", "prod_body", "shadow_body")


@dataclass(frozen=True, slots=True)
class Withheld:
    """Which bodies redaction could not make safe (not JSON), so they are not written."""

    request: bool = False
    production: bool = False
    shadow: bool = False


NOTHING_WITHHELD = Withheld()


def ts_micros(ts: float) -> int:
    """Seconds since the epoch -> the integer microseconds Arrow timestamps hold."""
    return round(ts * 1_000_000)


def utc_date(ts: float) -> str:
    """The ``date=`` partition of a timestamp: its UTC calendar day."""
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def pair_row(
    pair: Pair,
    comparison: Comparison | None,
    *,
    bodies: bool,
    max_body_bytes: int,
    withheld: Withheld = NOTHING_WITHHELD,
    compare_detail: str | None = None,
) -> dict[str, object]:
    """The row of one pair, keyed by ``PAIRS_SCHEMA`` names.

    ``pair`` must already be decoded and redacted: this only caps bodies, it never
    inspects them.
    ``compare_detail`` stands in for the comparison's detail when none exists (e.g.
    why the comparator failed).
    """
    request, prod, result = pair.request, pair.production, pair.result
    cap = max_body_bytes if bodies else None
    c = comparison
    return {
        "request_id": request.request_id,
        "ts": ts_micros(request.ts),
        "shadow": pair.shadow,
        "role": pair.role,
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "prod_status": prod.status,
        "prod_latency_ms": prod.latency_ms,
        "prod_error": prod.error,
        "prod_content_type": prod.content_type,
        "shadow_outcome": result.outcome,
        "shadow_status": result.status,
        "shadow_latency_ms": result.latency_ms,
        "shadow_error": result.error,
        "shadow_content_type": result.content_type,
        **_body_cells(
            "request_body",
            request.body,
            cap=cap,
            held=withheld.request,
            truncated=not request.body_complete,
            present=True,
        ),
        **_body_cells(
            "prod_body",
            prod.body,
            cap=cap,
            held=withheld.production,
            truncated=prod.body_truncated,
            present=prod.status is not None,
        ),
        **_body_cells(
            "shadow_body",
            result.body,
            cap=cap,
            held=withheld.shadow,
            truncated=result.body_truncated,
            present=result.status is not None,
        ),
        "comparator": c.comparator if c else None,
        "prod_prediction": c.prod_prediction if c else None,
        "shadow_prediction": c.shadow_prediction if c else None,
        "agree": c.agree if c else None,
        "diff_score": c.diff_score if c else None,
        "compare_detail": c.detail if c else compare_detail,
        "batch_size": c.batch_size if c else None,
        "batch_agree": c.batch_agree if c else None,
        "chaos": result.chaos,
        "prod_chaos": prod.chaos,
        "request_content_encoding": request.content_encoding,
        "prod_content_encoding": prod.content_encoding,
        "shadow_content_encoding": result.content_encoding,
        "request_body_decode_error": request.decode_error,
        "prod_body_decode_error": prod.decode_error,
        "shadow_body_decode_error": result.decode_error,
        "protocol": request.protocol,
        "prod_grpc_status": prod.grpc_status,
        "shadow_grpc_status": result.grpc_status,
        # The monitor's cells, filled by the writer on monitored routes.
        "prod_violations": None,
        "shadow_violations": None,
        "request_violations": None,
        "model_version": prod.model_version,
    }


def _body_cells(
    name: str, raw: bytes, *, cap: int | None, held: bool, truncated: bool, present: bool
) -> dict[str, object]:
    """``<name>``, ``<name>_truncated``, ``<name>_withheld`` of one body.

    The body is null when bodies are not recorded (``cap`` is None), when there was no
    response, or when it is withheld; ``_truncated`` is then null too. ``_withheld`` is
    true only for a body that would have been written but could not be redacted.
    """
    if cap is None or not present:
        return {name: None, f"{name}_truncated": None, f"{name}_withheld": False}
    if held:
        return {name: None, f"{name}_truncated": None, f"{name}_withheld": True}
    if len(raw) > cap:
        return {name: raw[:cap], f"{name}_truncated": True, f"{name}_withheld": False}
    return {name: raw, f"{name}_truncated": truncated, f"{name}_withheld": False}


def telemetry_row(
    observation: Observation,
    prediction: str | None,
    violations: list[str],
    request_violations: list[str],
    model_version: str | None,
    *,
    bodies: bool,
    max_body_bytes: int,
    withheld: Withheld = NOTHING_WITHHELD,
) -> dict[str, object]:
    """The row of one watched request without a shadow, keyed by ``TELEMETRY_SCHEMA``
    names. ``observation`` must already be redacted, as for ``pair_row``."""
    request, prod = observation.request, observation.production
    cap = max_body_bytes if bodies else None
    return {
        "request_id": request.request_id,
        "ts": ts_micros(request.ts),
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "prod_status": prod.status,
        "prod_latency_ms": prod.latency_ms,
        "prod_error": prod.error,
        "prod_content_type": prod.content_type,
        **_body_cells(
            "request_body", request.body, cap=cap, held=withheld.request,
            truncated=not request.body_complete, present=True,
        ),
        **_body_cells(
            "prod_body", prod.body, cap=cap, held=withheld.production,
            truncated=prod.body_truncated, present=prod.status is not None,
        ),
        "prediction": prediction,
        "violations": violations,
        "request_violations": request_violations,
        "model_version": model_version,
        "prod_chaos": prod.chaos,
        "request_content_encoding": request.content_encoding,
        "prod_content_encoding": prod.content_encoding,
        "request_body_decode_error": request.decode_error,
        "prod_body_decode_error": prod.decode_error,
    }  # fmt: skip


def feedback_row(request_id: str, label: str, ts: float) -> dict[str, object]:
    """The row of one ground-truth label, keyed by ``FEEDBACK_SCHEMA`` names."""
    return {"request_id": request_id, "label": label, "ts": ts_micros(ts)}


def exposure_row(e: Exposure) -> dict[str, object]:
    """The row of one exposure, keyed by ``EXPOSURES_SCHEMA`` names (route is its partition).

    Raises ``ValueError`` for a missing ``request_id`` or ``arm``: a null in a required
    column would make Arrow refuse the whole file, so the one row is refused here.
    """
    if not isinstance(e.request_id, str) or not isinstance(e.arm, str):
        raise ValueError(f"exposure without request_id or arm: {e!r}")
    return {
        "ts": ts_micros(e.ts),
        "request_id": e.request_id,
        "arm": e.arm,
        "unit": e.unit,
        "status": e.status,
        "latency_ms": e.latency_ms,
        "error": e.error,
        "chaos": e.chaos,
        "share": e.share,
    }


def row_bytes(row: dict[str, object]) -> int:
    """Roughly what a row weighs in memory: its bodies dominate, the rest is ~1 KiB."""
    size = 1024
    for name in _BODIES:
        value = row.get(name)
        if isinstance(value, bytes):
            size += len(value)
    return size


def to_record_batch(
    rows: Sequence[dict[str, object]], schema: pa.Schema = PAIRS_SCHEMA
) -> pa.RecordBatch:
    """Rows (from ``pair_row``, ``feedback_row``, ``exposure_row``) -> one Arrow batch."""
    return pa.RecordBatch.from_pylist(list(rows), schema=schema)
