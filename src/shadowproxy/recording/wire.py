"""What crosses the pipe between the proxy and its writer process.

Frames are ``length (4 bytes, big endian) | kind (1 byte) | pickle``. Pairs travel as
flat tuples of plain values: pickling those is C code only, so packing a batch costs
the event loop a few microseconds a pair (a slotted dataclass would go through Python
``__getstate__`` for each object). Headers are left behind: they are never recorded.
Exposures travel the same way, as tuples of their fields.
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
from typing import Any, Final

from shadowproxy.records import (
    Exposure,
    Observation,
    Pair,
    ProductionResult,
    RequestInfo,
    ShadowResult,
)

HEADER: Final = struct.Struct("!IB")
MAX_FRAME: Final = 1 << 30
"""A frame announcing more than this is corrupt (the stream cannot be trusted)."""

CONFIG: Final = ord("C")
"""Parent -> child, first frame: the ``Config`` to record for."""
PAIRS: Final = ord("P")
"""Parent -> child: a list of packed pairs."""
EXPOSURES: Final = ord("E")
"""Parent -> child: a list of packed exposures."""
TELEMETRY: Final = ord("T")
"""Parent -> child: a list of packed observations (production-only, watched requests)."""
FEEDBACK: Final = ord("F")
"""Parent -> child: a list of (request_id, label JSON text, received ts)."""
ROUTES: Final = ord("R")
"""Parent -> child: a reload's routes (tuple of ``RouteConfig``), for the pairs after it."""
STATUS: Final = ord("S")
"""Child -> parent: a status dict (records finished, health, metrics exposition)."""

PackedPair = tuple[Any, ...]
PackedExposure = tuple[Any, ...]
EXPOSURE_FIELDS: Final = tuple(field.name for field in dataclasses.fields(Exposure))
PackedObservation = tuple[Any, ...]


def frame(kind: int, payload: object) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data), kind) + data


def pack(pair: Pair) -> PackedPair:
    request, production, result = pair.request, pair.production, pair.result
    return (
        request.request_id, request.ts, request.route, request.method, request.path,
        request.query, request.body, request.body_complete, request.content_encoding,
        pair.shadow, pair.role,
        production.status, production.latency_ms, production.error, production.body,
        production.body_truncated, production.content_type, production.chaos,
        production.content_encoding, production.model_version,
        result.outcome, result.status, result.latency_ms, result.error, result.body,
        result.body_truncated, result.content_type, result.chaos, result.content_encoding,
        request.protocol, production.grpc_status, result.grpc_status, pair.watched, pair.primary,
    )  # fmt: skip


def unpack(packed: PackedPair) -> Pair:
    (
        request_id, ts, route, method, path, query, body, body_complete, request_encoding,
        shadow, role,
        prod_status, prod_latency, prod_error, prod_body, prod_truncated, prod_type, prod_chaos,
        prod_encoding, prod_version,
        outcome, status, latency, error, shadow_body, truncated, content_type, chaos, encoding,
        protocol, prod_grpc, shadow_grpc, watched, primary,
    ) = packed  # fmt: skip
    return Pair(
        request=RequestInfo(
            request_id=request_id, ts=ts, route=route, method=method, path=path, query=query,
            headers=[], body=body, body_complete=body_complete,
            content_encoding=request_encoding, protocol=protocol,
        ),
        shadow=shadow,
        role=role,
        production=ProductionResult(
            status=prod_status, latency_ms=prod_latency, error=prod_error, body=prod_body,
            body_truncated=prod_truncated, content_type=prod_type, chaos=prod_chaos,
            content_encoding=prod_encoding, grpc_status=prod_grpc, model_version=prod_version,
        ),
        result=ShadowResult(
            outcome=outcome, status=status, latency_ms=latency, error=error, body=shadow_body,
            body_truncated=truncated, content_type=content_type, chaos=chaos,
            content_encoding=encoding, grpc_status=shadow_grpc,
        ),
        watched=watched,
        primary=primary,
    )  # fmt: skip


def pack_exposure(e: Exposure) -> PackedExposure:
    return (
        e.request_id, e.ts, e.route, e.arm, e.unit, e.status, e.latency_ms, e.error, e.chaos,
        e.share,
    )  # fmt: skip


def unpack_exposure(packed: PackedExposure) -> Exposure:
    return Exposure(**dict(zip(EXPOSURE_FIELDS, packed, strict=True)))
    return Exposure(*packed)


def pack_observation(o: Observation) -> PackedObservation:
    request, production = o.request, o.production
    return (
        request.request_id, request.ts, request.route, request.method, request.path,
        request.query, request.body, request.body_complete, request.content_encoding,
        request.protocol,
        production.status, production.latency_ms, production.error, production.body,
        production.body_truncated, production.content_type, production.chaos,
        production.model_version, production.content_encoding, production.grpc_status,
    )  # fmt: skip


def unpack_observation(packed: PackedObservation) -> Observation:
    (
        request_id, ts, route, method, path, query, body, body_complete, request_encoding,
        protocol,
        status, latency, error, prod_body, truncated, content_type, chaos, version,
        prod_encoding, grpc_status,
    ) = packed  # fmt: skip
    return Observation(
        request=RequestInfo(
            request_id=request_id, ts=ts, route=route, method=method, path=path, query=query,
            headers=[], body=body, body_complete=body_complete,
            content_encoding=request_encoding, protocol=protocol,
        ),
        production=ProductionResult(
            status=status, latency_ms=latency, error=error, body=prod_body,
            body_truncated=truncated, content_type=content_type, chaos=chaos,
            model_version=version, content_encoding=prod_encoding, grpc_status=grpc_status,
        ),
    )  # fmt: skip
