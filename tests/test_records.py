"""The recorded row: schema contract and pure row building (no files, no threads)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from shadowproxy.recording.schema import (
    EXPOSURES_SCHEMA,
    FEEDBACK_SCHEMA,
    NOTHING_WITHHELD,
    PAIRS_SCHEMA,
    Withheld,
    exposure_row,
    feedback_row,
    pair_row,
    row_bytes,
    to_record_batch,
    ts_micros,
    utc_date,
)
from shadowproxy.records import (
    Comparison,
    Exposure,
    Pair,
    ProductionResult,
    RequestInfo,
    ShadowResult,
)

TS = datetime(2024, 5, 17, 12, 30, 0, 123456, tzinfo=UTC).timestamp()

# The contract readers rely on: exactly these names and types (more columns allowed).
CONTRACT = {
    "request_id": pa.string(),
    "ts": pa.timestamp("us", tz="UTC"),
    "shadow": pa.string(),
    "method": pa.string(),
    "path": pa.string(),
    "query": pa.string(),
    "prod_status": pa.int32(),
    "prod_latency_ms": pa.float64(),
    "prod_error": pa.string(),
    "shadow_outcome": pa.string(),
    "shadow_status": pa.int32(),
    "shadow_latency_ms": pa.float64(),
    "shadow_error": pa.string(),
    "request_body": pa.binary(),
    "prod_body": pa.binary(),
    "shadow_body": pa.binary(),
    "request_body_truncated": pa.bool_(),
    "prod_body_truncated": pa.bool_(),
    "shadow_body_truncated": pa.bool_(),
    "prod_prediction": pa.string(),
    "shadow_prediction": pa.string(),
    "agree": pa.bool_(),
    "role": pa.string(),
    "comparator": pa.string(),
    "diff_score": pa.float64(),
    "compare_detail": pa.string(),
    "batch_size": pa.int32(),
    "batch_agree": pa.int32(),
    "prod_content_type": pa.string(),
    "shadow_content_type": pa.string(),
}


def make_pair(
    *,
    body: bytes = b'{"x": 1}',
    complete: bool = True,
    prod_status: int | None = 200,
    prod_body: bytes = b'{"y": 1}',
    prod_truncated: bool = False,
    outcome: str = "ok",
    shadow_status: int | None = 200,
    shadow_body: bytes = b'{"y": 2}',
    shadow_truncated: bool = False,
) -> Pair:
    request = RequestInfo(
        request_id="req-1",
        ts=TS,
        route="price",
        method="POST",
        path="/v1/predict",
        query="a=1",
        headers=[],
        body=body,
        body_complete=complete,
    )
    production = ProductionResult(
        status=prod_status, latency_ms=12.5, error=None if prod_status else "upstream timeout", body=prod_body,
        body_truncated=prod_truncated, content_type="application/json",
    )  # fmt: skip
    result = ShadowResult(
        outcome=outcome,  # type: ignore[arg-type]
        status=shadow_status, latency_ms=20.0 if shadow_status else None, error=None if shadow_status else "timed out",
        body=shadow_body, body_truncated=shadow_truncated, content_type="application/json" if shadow_status else None,
    )  # fmt: skip
    return Pair(
        request=request,
        shadow="candidate-v2",
        role="candidate",
        production=production,
        result=result,
    )


def row(pair: Pair, comparison: Comparison | None = None, **options: object) -> dict[str, object]:
    settings: dict[str, object] = {"bodies": True, "max_body_bytes": 65536, **options}
    return pair_row(pair, comparison, **settings)  # type: ignore[arg-type]


def test_schema_holds_the_contract_names_and_types() -> None:
    for name, expected in CONTRACT.items():
        assert PAIRS_SCHEMA.field(name).type == expected, name


def test_route_is_left_to_the_partition_directory() -> None:
    # Stored as a column too, it would clash with hive partitioning in some readers.
    assert "route" not in PAIRS_SCHEMA.names
    assert "date" not in PAIRS_SCHEMA.names


def test_feedback_schema() -> None:
    assert FEEDBACK_SCHEMA.names == ["request_id", "label", "ts"]
    assert FEEDBACK_SCHEMA.field("ts").type == pa.timestamp("us", tz="UTC")


def test_every_column_is_documented() -> None:
    for schema_field in (*PAIRS_SCHEMA, *FEEDBACK_SCHEMA, *EXPOSURES_SCHEMA):
        assert schema_field.metadata[b"description"], schema_field.name


def test_row_keys_match_the_schema_exactly() -> None:
    assert list(row(make_pair())) == PAIRS_SCHEMA.names


def test_a_full_row() -> None:
    comparison = Comparison("label", '"cat"', '"dog"', False, 1.0, "$: cat != dog", 4, 3)
    cells = row(make_pair(), comparison)
    assert cells["ts"] == ts_micros(TS)
    assert cells["request_body"] == b'{"x": 1}'
    assert cells["request_body_truncated"] is False
    assert cells["shadow_body_withheld"] is False
    assert (cells["comparator"], cells["agree"], cells["diff_score"]) == ("label", False, 1.0)
    assert (cells["batch_size"], cells["batch_agree"]) == (4, 3)
    assert cells["compare_detail"] == "$: cat != dog"
    assert cells["role"] == "candidate"


def test_no_comparison_leaves_comparison_columns_null() -> None:
    cells = row(make_pair())
    for name in ("comparator", "prod_prediction", "shadow_prediction", "agree", "diff_score",
                 "compare_detail", "batch_size", "batch_agree"):  # fmt: skip
        assert cells[name] is None, name


def test_compare_detail_stands_in_when_no_comparison() -> None:
    cells = pair_row(
        make_pair(), None, bodies=True, max_body_bytes=10, compare_detail="comparator error: x"
    )
    assert cells["compare_detail"] == "comparator error: x"
    assert cells["agree"] is None


@pytest.mark.parametrize(
    ("body", "upstream_truncated", "cap", "expected", "truncated"),
    [
        (b"0123456789", False, 100, b"0123456789", False),
        (b"0123456789", False, 10, b"0123456789", False),
        (b"0123456789", False, 4, b"0123", True),
        (b"0123456789", True, 100, b"0123456789", True),
        (b"", False, 0, b"", False),
        (b"x", False, 0, b"", True),
    ],
)
def test_body_cap_and_truncated_flags(
    body: bytes, upstream_truncated: bool, cap: int, expected: bytes, truncated: bool
) -> None:
    pair = make_pair(
        body=body, complete=not upstream_truncated,
        prod_body=body, prod_truncated=upstream_truncated,
        shadow_body=body, shadow_truncated=upstream_truncated,
    )  # fmt: skip
    cells = row(pair, max_body_bytes=cap)
    for name in ("request_body", "prod_body", "shadow_body"):
        assert cells[name] == expected, name
        assert cells[f"{name}_truncated"] is truncated, name


def test_no_response_means_null_status_and_body() -> None:
    cells = row(make_pair(outcome="timeout", shadow_status=None, shadow_body=b""))
    assert cells["shadow_status"] is None
    assert cells["shadow_body"] is None
    assert cells["shadow_body_truncated"] is None
    assert cells["shadow_latency_ms"] is None
    assert cells["shadow_outcome"] == "timeout"


def test_production_failure() -> None:
    cells = row(make_pair(prod_status=None, prod_body=b""))
    assert cells["prod_status"] is None
    assert cells["prod_error"] == "upstream timeout"
    assert cells["prod_body"] is None


def test_bodies_false_keeps_metadata_and_predictions_only() -> None:
    comparison = Comparison("exact", "1", "2", False, None, None)
    cells = row(make_pair(), comparison, bodies=False)
    for name in ("request_body", "prod_body", "shadow_body"):
        assert cells[name] is None
        assert cells[f"{name}_truncated"] is None
        assert cells[f"{name}_withheld"] is False
    assert (cells["prod_prediction"], cells["shadow_prediction"]) == ("1", "2")
    assert cells["prod_latency_ms"] == 12.5


def test_withheld_bodies_are_null_and_flagged() -> None:
    cells = row(make_pair(), withheld=Withheld(request=True, shadow=True))
    assert cells["request_body"] is None and cells["request_body_withheld"] is True
    assert cells["shadow_body"] is None and cells["shadow_body_withheld"] is True
    assert cells["prod_body"] == b'{"y": 1}' and cells["prod_body_withheld"] is False


def test_to_record_batch_round_trip() -> None:
    rows = [row(make_pair()), row(make_pair(outcome="error", shadow_status=None))]
    batch = to_record_batch(rows)
    assert batch.schema.equals(PAIRS_SCHEMA)
    assert batch.num_rows == 2
    first = batch.to_pylist()[0]
    assert first["ts"] == datetime.fromtimestamp(TS, UTC)
    assert first["prod_status"] == 200


def test_feedback_rows() -> None:
    batch = to_record_batch([feedback_row("req-1", '{"label": "cat"}', TS)], FEEDBACK_SCHEMA)
    assert batch.to_pylist() == [
        {"request_id": "req-1", "label": '{"label": "cat"}', "ts": datetime.fromtimestamp(TS, UTC)}
    ]


EXPOSURE_CONTRACT = {
    "ts": (pa.timestamp("us", tz="UTC"), False),
    "request_id": (pa.string(), False),
    "arm": (pa.string(), False),
    "unit": (pa.string(), True),
    "status": (pa.int32(), True),
    "latency_ms": (pa.float64(), True),
    "error": (pa.string(), True),
    "chaos": (pa.string(), True),
    "share": (pa.float64(), True),
}


def test_exposure_schema_holds_the_contract_names_types_and_nullability() -> None:
    assert set(EXPOSURES_SCHEMA.names) == set(EXPOSURE_CONTRACT)
    for name, (expected, nullable) in EXPOSURE_CONTRACT.items():
        assert EXPOSURES_SCHEMA.field(name).type == expected, name
        assert EXPOSURES_SCHEMA.field(name).nullable is nullable, name


def test_exposure_rows() -> None:
    served = Exposure(
        request_id="req-1",
        ts=TS,
        route="price",
        arm="canary",
        unit="u-9f",
        status=200,
        latency_ms=12.5,
        error=None,
        chaos="delay_ms=5",
        share=0.05,
    )
    failed = Exposure(
        request_id="req-2",
        ts=TS,
        route="price",
        arm="control",
        unit=None,
        status=None,
        latency_ms=None,
        error="upstream timeout",
    )
    assert list(exposure_row(served)) == EXPOSURES_SCHEMA.names
    batch = to_record_batch([exposure_row(served), exposure_row(failed)], EXPOSURES_SCHEMA)
    assert batch.schema.equals(EXPOSURES_SCHEMA)
    assert batch.to_pylist() == [
        {"ts": datetime.fromtimestamp(TS, UTC), "request_id": "req-1", "arm": "canary",
         "unit": "u-9f", "status": 200, "latency_ms": 12.5, "error": None, "chaos": "delay_ms=5",
         "share": 0.05},
        {"ts": datetime.fromtimestamp(TS, UTC), "request_id": "req-2", "arm": "control",
         "unit": None, "status": None, "latency_ms": None, "error": "upstream timeout",
         "chaos": None, "share": None},
    ]  # fmt: skip


@pytest.mark.parametrize("missing", ["request_id", "arm"])
def test_an_exposure_without_its_required_cells_is_refused(missing: str) -> None:
    exposure = replace(
        Exposure(
            request_id="r",
            ts=TS,
            route="price",
            arm="a",
            unit=None,
            status=200,
            latency_ms=1.0,
            error=None,
        ),
        **{missing: None},
    )
    with pytest.raises(ValueError, match="request_id or arm"):
        exposure_row(exposure)


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        (datetime(2024, 5, 17, 23, 59, 59, 999999, tzinfo=UTC), date(2024, 5, 17)),
        (datetime(2024, 5, 18, 0, 0, 0, tzinfo=UTC), date(2024, 5, 18)),
        (datetime(1970, 1, 1, tzinfo=UTC), date(1970, 1, 1)),
    ],
)
def test_partition_date_is_the_utc_day(moment: datetime, day: date) -> None:
    assert utc_date(moment.timestamp()) == day.isoformat()


def test_ts_keeps_microseconds() -> None:
    assert ts_micros(1.000001) == 1_000_001


def test_row_bytes_counts_bodies() -> None:
    cells = row(make_pair(body=b"x" * 5000))
    assert row_bytes(cells) >= 5000
    assert Withheld() == NOTHING_WITHHELD
