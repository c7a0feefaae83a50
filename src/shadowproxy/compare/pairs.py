"""From a ``records.Pair`` to a ``records.Comparison``: the whole comparison of one pair.

For each side: is there an answer worth reading (shadow outcome, HTTP status), was its
``Content-Encoding`` undone (the recorder decodes bodies first: ``content_coding``), decode
the body (``decode``), extract the prediction (``extract``) and serialise it for the
record; then judge both predictions with the route's comparator. The first reason the
pair cannot be judged wins, in this order: a client that abandoned production's stream
(production's answer is partial), the shadow's outcome, production's status, the
shadow's status, production's body, the shadow's body, the comparator. Whatever
could be extracted is still recorded, so a shadow timeout keeps production's prediction.

Pure and thread-safe (apart from ``Comparer``'s tally, which takes a lock): it runs in
the sink's worker, never on the event loop.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from shadowproxy.compare.comparators import judge, resolve
from shadowproxy.compare.decode import decode
from shadowproxy.compare.extract import Extractor
from shadowproxy.compare.spec import MAX_DEPTH, CompareConfig
from shadowproxy.compare.verdict import Incomparable, Verdict, clip, identical
from shadowproxy.records import (
    CLIENT_ABANDONED,
    Comparison,
    Pair,
    ProductionResult,
    ShadowResult,
)

if TYPE_CHECKING:
    from shadowproxy.compare.grpc_messages import MessageTypes


class ComparedRoute(Protocol):
    """What the comparer needs of a route (``config.RouteConfig`` is one); a protocol,
    because ``config`` imports this package for ``CompareConfig``."""

    @property
    def name(self) -> str: ...
    @property
    def compare(self) -> CompareConfig: ...
    @property
    def grpc_messages(self) -> tuple[bytes, str] | None: ...


_ERROR_CHARS = 120
ABANDONED_REASON = f"{CLIENT_ABANDONED}: production's answer is partial"


@dataclass(slots=True)
class _Side:
    """One side's prediction (and its JSON text), or why it has none."""

    value: Any = None
    text: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A route's comparison, compiled once: call it with each pair."""

    config: CompareConfig
    extract: Extractor
    messages: MessageTypes | None = None
    """The route's gRPC message types (``grpc_descriptor_set``), when it names them."""

    @classmethod
    def build(cls, config: CompareConfig, messages: tuple[bytes, str] | None = None) -> Plan:
        """``messages``: a route's ``grpc_messages`` (descriptor set bytes, match)."""
        typed = None
        if messages is not None:
            # Imported here: protobuf is needed only once a route names a descriptor set.
            from shadowproxy.compare import grpc_messages

            typed = grpc_messages.load(*messages)
        return cls(config, Extractor.build(config), typed)

    def __call__(self, pair: Pair) -> Comparison:
        abandoned = ABANDONED_REASON if pair.production.error == CLIENT_ABANDONED else None
        outcome = _outcome_reason(pair)
        production, result = pair.production, pair.result
        prod_status = abandoned or _status_reason(
            "production", production.status, production.error, production.grpc_status
        )
        shadow_status = _status_reason("shadow", result.status, result.error, result.grpc_status)
        prod = _Side(reason=prod_status) if prod_status else self._read("production", pair)
        skip_shadow = outcome or shadow_status
        shadow = _Side(reason=skip_shadow) if skip_shadow else self._read("shadow", pair)
        kind: str = self.config.kind
        name: str = kind
        if _whole_message(pair, self.messages):
            kind = name = "exact"  # no prediction in it: the message is equal or not
        elif prod.reason is None:
            kind, name = resolve(self.config.kind, prod.value, self.config.prediction)
        reason = (
            abandoned or outcome or prod_status or shadow_status or prod.reason or shadow.reason
        )
        verdict = Verdict(None, None, clip(reason)) if reason else self._judge(kind, prod, shadow)
        return Comparison(
            comparator=name,
            prod_prediction=prod.text,
            shadow_prediction=shadow.text,
            agree=verdict.agree,
            diff_score=verdict.diff_score,
            detail=verdict.detail,
            batch_size=verdict.batch_size,
            batch_agree=verdict.batch_agree,
        )

    def _judge(self, kind: str, prod: _Side, shadow: _Side) -> Verdict:
        if kind == "exact" and prod.text == shadow.text:
            # Same JSON text, same value: skip the walk (the common case for ``exact``).
            return identical(len(prod.value) if isinstance(prod.value, list) else None)
        return judge(kind, prod.value, shadow.value, self.config)

    def _read(self, side: str, pair: Pair) -> _Side:
        result = pair.production if side == "production" else pair.result
        if result.decode_error is not None:  # a compressed body the recorder could not decode
            return _Side(reason=f"{side} body {result.decode_error}")
        try:
            if pair.request.protocol == "grpc":
                value = _grpc_prediction(side, pair, result, self.extract, self.messages)
                return _Side(value, _serialise(side, value))
            answer = decode(side, result.body, result.content_type, result.body_truncated)
            value = self.extract(side, answer)
            return _Side(value, _serialise(side, value))
        except Incomparable as exc:
            return _Side(reason=exc.reason)


def _outcome_reason(pair: Pair) -> str | None:
    result = pair.result
    if result.outcome == "ok":
        return None
    return f"shadow {result.outcome}{_because(result.error)}"


def _whole_message(pair: Pair, messages: MessageTypes | None) -> bool:
    """gRPC answers other than ``ModelInfer`` (metadata, liveness, other services)
    carry no prediction: they compare whole, exactly; but for the methods a route
    typed with a descriptor set, which compare as its ``compare:`` says."""
    if pair.request.protocol != "grpc":
        return False
    if messages is not None and messages.knows(pair.request.path):
        return False
    # Imported here: protobuf is needed only once gRPC routes are served.
    from shadowproxy.compare.inference_grpc import is_infer

    return not is_infer(pair.request.path)


def _grpc_prediction(
    side: str,
    pair: Pair,
    result: ProductionResult | ShadowResult,
    extract: Extractor,
    messages: MessageTypes | None,
) -> Any:
    """A gRPC answer's prediction: ``ModelInfer`` decoded to its REST form and a method
    the route typed (``grpc_descriptor_set``) to its JSON form, so the route's
    extraction applies; the Open Inference service's other answers decoded whole; any
    other message as its bytes."""
    from shadowproxy.compare.inference_grpc import decode_response, decodes, is_infer, raw_bytes

    path = pair.request.path
    if result.body_truncated:
        raise Incomparable(f"{side} message truncated")
    if messages is not None and messages.knows(path):
        return extract(side, messages.response(side, path, result.body))
    if not decodes(path):
        return raw_bytes(result.body)
    answer = decode_response(side, path, result.body)
    return extract(side, answer) if is_infer(path) else answer


def _status_reason(
    side: str, status: int | None, error: str | None, grpc_status: str | None = None
) -> str | None:
    if status is None:
        return f"{side} gave no answer{_because(error)}"
    if grpc_status is not None and grpc_status != "OK":
        return f"{side} gRPC status {grpc_status}{_because(error)}"
    if not 200 <= status < 300:
        return f"{side} status {status}"
    return None


def _because(error: str | None) -> str:
    return f" ({clip(error, _ERROR_CHARS)})" if error else ""


def _serialise(side: str, value: Any) -> str:
    """The prediction as recorded; also where over-deep JSON is caught (orjson's limit)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        if "recursion" in str(exc).lower():
            raise Incomparable(
                f"{side} prediction is nested too deep (limit {MAX_DEPTH} levels)"
            ) from None
        raise Incomparable(f"{side} prediction cannot be serialised: {exc}") from None


@functools.lru_cache(maxsize=256)
def plan_for(config: CompareConfig) -> Plan:
    return Plan.build(config)


def compare(config: CompareConfig, pair: Pair) -> Comparison:
    """Compare one pair under ``config`` (compiled once per distinct config and cached)."""
    return plan_for(config)(pair)


class Comparer:
    """Every route's comparison, compiled once; call it with each finished pair.

    Pairs of a route it does not know (the ``default_upstream`` pass-through) are
    compared with the defaults (``raw`` + ``auto``). It also tallies what ``auto``
    picked per route, for ``/routes``: ``auto_choices()``. Thread-safe.
    """

    def __init__(self, routes: Sequence[ComparedRoute]) -> None:
        self.update_routes(routes)
        self._default = Plan.build(CompareConfig())
        self._lock = threading.Lock()
        self._auto: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def __call__(self, pair: Pair) -> Comparison:
        route = pair.request.route
        comparison = self._plans.get(route, self._default)(pair)
        kind, sep, picked = comparison.comparator.partition(":")
        if sep and kind == "auto":
            with self._lock:
                self._auto[route][picked] += 1
        return comparison

    def update_routes(self, routes: Sequence[ComparedRoute]) -> None:
        """Compare with these routes' settings from now on (a reload)."""
        self._plans = {
            route.name: Plan.build(route.compare, route.grpc_messages) for route in routes
        }

    def auto_choices(self) -> dict[str, dict[str, int]]:
        """``{route: {comparator: pairs}}`` for the pairs ``auto`` judged so far."""
        with self._lock:
            return {route: dict(counts) for route, counts in self._auto.items()}
