"""The pair: one shadow decision joined with production's result; and the exposure.

Every sampled (request, shadow) becomes exactly one ``Pair`` whatever happened to the
copy, so recorded rows reconcile with traffic: ``rows = sampled requests x shadows``.
Every request served on an experiment route becomes one ``Exposure``: the arm that
answered it. Both are plain data built on the event loop with no parsing; comparison
and serialisation happen downstream, off the production path.

Bodies are kept as they travelled, compressed or not, with their ``Content-Encoding``;
the recorder decodes them (``recording.decoding``) before redaction and comparison.

Plain data with no heavy imports: the serving process never loads Arrow. The recorded
form of a pair (the Parquet schema) is written down once, in ``shadowproxy.recording.schema``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

ShadowOutcome = Literal["ok", "error", "timeout", "dropped", "skipped"]
OUTCOMES: tuple[ShadowOutcome, ...] = ("ok", "error", "timeout", "dropped", "skipped")

CLIENT_ABANDONED = "client abandoned the stream"
"""``ProductionResult.error`` when the client left during a streamed answer. The proxy
stops reading production then (an LLM server would go on generating tokens nobody
reads), so production's answer is partial: the pair is never compared, and the request
is counted as 499 like any client that leaves before its answer."""


@dataclass(slots=True, kw_only=True)
class RequestInfo:
    request_id: str
    ts: float
    """Arrival time, seconds since the epoch (UTC)."""
    route: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    body_complete: bool
    """False when the body exceeded the route's ``max_body_bytes`` and was streamed."""
    content_encoding: str | None = None
    """The request's ``Content-Encoding`` as sent (``gzip``); None when it had none."""
    decode_error: str | None = None
    """Set by the recorder when ``body`` could not be decoded (``recording.decoding``)."""
    protocol: str = "http"
    """``http``, or ``grpc``: then ``path`` is ``/package.Service/Method`` and bodies are
    the message bytes."""


@dataclass(slots=True, kw_only=True)
class ProductionResult:
    status: int | None
    """None when no response arrived (the client got a 502/504 from the proxy)."""
    latency_ms: float
    error: str | None
    body: bytes
    body_truncated: bool
    content_type: str | None
    chaos: str | None = None
    """The faults injected into this answer (``experiments.chaos`` marker); None normally."""
    content_encoding: str | None = None
    """``Content-Encoding`` as sent (``gzip``, ``gzip, br``); None when the answer had none.
    The client gets the bytes as sent; the recorder decodes ``body`` before anything
    reads it (``recording.decoding``)."""
    decode_error: str | None = None
    """Why the recorder could not decode ``body`` (it then holds the bytes as sent)."""
    grpc_status: str | None = None
    """gRPC calls: the status code's name (``OK``, ``UNAVAILABLE``); ``status`` holds
    its HTTP equivalent."""


@dataclass(slots=True, kw_only=True)
class ShadowResult:
    outcome: ShadowOutcome
    status: int | None
    latency_ms: float | None
    error: str | None
    """Why the copy failed, or why it was not sent (``circuit_open``, ``body_too_large``)."""
    body: bytes
    body_truncated: bool
    content_type: str | None
    chaos: str | None = None
    """The faults injected into this copy (``delay_ms=500,corrupt_prediction``); None normally.
    ``corrupt_prediction`` is applied by the recorder, before comparison."""
    content_encoding: str | None = None
    """``Content-Encoding`` as sent; decoded by the recorder, like production's."""
    decode_error: str | None = None
    """Why the recorder could not decode ``body`` (it then holds the bytes as sent)."""
    grpc_status: str | None = None
    """gRPC calls: the status code's name; ``status`` holds its HTTP equivalent."""


@dataclass(slots=True, kw_only=True)
class Pair:
    request: RequestInfo
    shadow: str
    role: str
    production: ProductionResult
    result: ShadowResult


@dataclass(slots=True)
class Comparison:
    """What the comparator concluded about one pair (see ``shadowproxy.compare``)."""

    comparator: str
    """The comparator that ran (``auto`` resolves to a concrete one)."""
    prod_prediction: str | None
    """Production's extracted prediction as JSON text."""
    shadow_prediction: str | None
    agree: bool | None
    """None when incomparable (no answer, non-JSON, prediction missing)."""
    diff_score: float | None
    """0 = identical; comparator-specific scale, documented per comparator."""
    detail: str | None
    """The first differing path, or why the pair is incomparable."""
    batch_size: int | None = None
    batch_agree: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """One client request served on an experiment route (canary, A/B): which arm answered.

    Joined with feedback by ``request_id`` to compare the arms' outcomes.
    """

    request_id: str
    ts: float
    """Arrival time, seconds since the epoch (UTC)."""
    route: str
    arm: str
    unit: str | None
    """A hash of the assignment key (e.g. the user); None when assignment is random."""
    status: int | None
    """The status sent to the client; None when none was sent."""
    latency_ms: float | None
    error: str | None
    chaos: str | None = None
    """The faults injected into the answer (``experiments.chaos`` marker); None normally."""
    share: float | None = None
    """The share of the experiment's traffic configured for this arm (0..1), so the
    report can check the observed split (sample ratio mismatch) from the data alone."""


class PairSink(Protocol):
    """Where finished pairs go. ``submit`` runs on the event loop: it must not block."""

    def submit(self, pair: Pair) -> None: ...


class ExposureSink(Protocol):
    """Where exposures go. ``submit_exposure`` runs on the event loop: it must not block."""

    def submit_exposure(self, exposure: Exposure) -> None: ...


VerdictCounts = Mapping[tuple[str, str], tuple[int, int]]
"""Cumulative (agreed, disagreed) comparisons per (route, shadow); incomparable pairs
are left out."""


@runtime_checkable
class VerdictSource(Protocol):
    """A sink that compares pairs and tells the serving process the verdicts, so a
    canary's disagreement guardrail can use them (``recording.Recorder``,
    ``recording.process.RecorderProcess``)."""

    def verdict_counts(self) -> VerdictCounts:
        """Counted since the sink started; cheap, called from the event loop."""


class Sink(PairSink, Protocol):
    """A pair sink with a lifecycle, so the server can start it and flush it at shutdown."""

    async def start(self) -> None:
        """Called once before traffic is accepted."""

    async def close(self) -> None:
        """Called once after the shadow drain: write everything still buffered."""

    def health(self) -> dict[str, object]:
        """``{"status": "ok" | "degraded", ...}`` for ``/readyz``."""
