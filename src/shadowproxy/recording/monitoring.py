"""A route's ``monitor:`` block at work in the writer: parse, check, count.

Runs on the writer thread (in the writer process by default), never on the event loop,
like comparison: the proxy only decided which requests are watched. For each watched
answer it parses the request and the answer, reads the features and the prediction
(``compare``'s extraction for the route), checks the invariants, and updates the
monitoring metrics; the violations also go on the recorded row. Class and category
label values pass through a ``CategoryBound`` per route and feature, so a route fed
any number of distinct values keeps ``max_categories + 1`` series.

A body that is not JSON (or truncated) is not an error: its features, prediction and
rules are simply not there, and the answer still counts as watched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter

from shadowproxy.compare.decode import decode
from shadowproxy.compare.extract import Extractor
from shadowproxy.compare.jsonpath import parse
from shadowproxy.compare.verdict import Incomparable
from shadowproxy.config import RouteConfig
from shadowproxy.metrics import RecorderMetrics
from shadowproxy.monitor import invariants, observe
from shadowproxy.monitor.categories import CategoryBound
from shadowproxy.monitor.spec import MonitorConfig
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult

MAX_VERSIONS = 20
"""Model versions kept as label values per route (then ``other``)."""
REQUEST_ROLE = "request"
PRODUCTION_ROLE = "production"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the monitor read from one side's answer."""

    prediction: Any
    """The extracted prediction; None when there is none (not JSON, path not found)."""
    violations: list[str]
    model_version: str | None = None


NO_ANSWER = Answer(None, [])


class RouteWatch:
    """One route's monitor, compiled once, with its bounds and metric children."""

    def __init__(
        self, route: str, config: MonitorConfig, extractor: Extractor, metrics: RecorderMetrics
    ) -> None:
        self.route = route
        self.config = config
        self._extract = extractor
        self._features = [observe.Feature.build(spec) for spec in config.features]
        self._rules = invariants.build(config.invariants)
        path = config.version.path
        self._version = parse(path) if path is not None else None
        self._metrics = metrics
        prediction = config.prediction
        self._classes: dict[str, CategoryBound] = {}
        self._class_bound = (prediction.max_categories, prediction.categories)
        self._versions = CategoryBound(MAX_VERSIONS)
        self._kinds: dict[str, observe.PredictionKind] = {}
        self._children: dict[tuple[object, ...], Any] = {}
        """Metric children by (metric, labels): ``labels()`` costs more than the count.
        Bounded like the labels themselves."""
        self._categories = {
            f.name: CategoryBound(f.max_categories, f.categories)
            for f in config.features
            if f.kind == "categorical"
        }

    @classmethod
    def build(cls, route: RouteConfig, metrics: RecorderMetrics) -> RouteWatch | None:
        if route.monitor is None:
            return None
        return cls(route.name, route.monitor, Extractor.build(route.compare), metrics)

    # --- what the writer calls -------------------------------------------------

    def request(self, request: RequestInfo, *, count: bool) -> list[str]:
        """The request's violations; with ``count``, its features and rules are counted."""
        doc = _parse(request.body) if request.body_complete else None
        broken = [] if doc is None else invariants.request_violations(self._rules, doc)
        if count:
            self._inc(self._metrics.monitored, REQUEST_ROLE)
            if doc is not None:
                self._count_features(doc)
            self._count_violations(REQUEST_ROLE, broken)
        return broken

    def production(self, production: ProductionResult, *, count: bool) -> Answer:
        answer = self._answer(
            "production", production.status, production.body, production.content_type,
            production.body_truncated, version=self._version is not None,
        )  # fmt: skip
        if self._version is None and production.model_version is not None:
            answer = Answer(answer.prediction, answer.violations, production.model_version)
        if count:
            self._count_answer(PRODUCTION_ROLE, answer)
            if answer.model_version is not None:
                version = self._versions.label(answer.model_version)
                self._inc(self._metrics.model_version_answers, version)
        return answer

    def shadow(self, pair: Pair) -> Answer:
        """A shadow's answer; every copy that answered is counted under its name."""
        result: ShadowResult = pair.result
        if result.outcome != "ok":
            return NO_ANSWER
        answer = self._answer(
            "shadow", result.status, result.body, result.content_type, result.body_truncated
        )
        self._count_answer(pair.shadow, answer)
        return answer

    # --- reading ----------------------------------------------------------------

    def _answer(
        self,
        side: str,
        status: int | None,
        body: bytes,
        content_type: str | None,
        truncated: bool,
        *,
        version: bool = False,
    ) -> Answer:
        if status is None or not 200 <= status < 300:
            return NO_ANSWER
        try:
            doc = decode(side, body, content_type, truncated)
        except Incomparable:
            return NO_ANSWER
        try:
            prediction = self._extract(side, doc)
        except Incomparable:
            prediction = None
        broken = (
            [] if prediction is None else invariants.prediction_violations(self._rules, prediction)
        )
        found = observe.model_version(doc, self._version) if version and self._version else None
        return Answer(prediction, broken, found)

    # --- counting -----------------------------------------------------------------

    def _count_answer(self, role: str, answer: Answer) -> None:
        self._inc(self._metrics.monitored, role)
        self._count_violations(role, answer.violations)
        if answer.prediction is None:
            return
        kind = self._kinds.get(role)
        if kind is None:
            # Resolved once per role: a route's answers keep their shape, and ``auto``
            # walks the whole prediction.
            kind = observe.resolve_kind(self.config.prediction.kind, answer.prediction)
            if kind is not None:
                self._kinds[role] = kind
        if kind == "numeric":
            buckets = self.config.prediction.buckets
            for value in observe.numbers(answer.prediction):
                self._metrics.prediction_value.observe((self.route, role), buckets, value)
        elif kind == "label":
            bound = self._class_bound_for(role)
            for label in observe.labels(answer.prediction):
                self._inc(self._metrics.predicted_class, role, bound.label(label))

    def _inc(self, metric: Counter, *labels: str) -> None:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.route, *labels)
        child.inc()

    def _class_bound_for(self, role: str) -> CategoryBound:
        """Each role keeps its own first N classes: a shadow that answers new classes
        must not push production's out of the labels."""
        bound = self._classes.get(role)
        if bound is None:
            size, fixed = self._class_bound
            bound = self._classes[role] = CategoryBound(size, fixed)
        return bound

    def _count_features(self, doc: Any) -> None:
        for feature in self._features:
            spec = feature.spec
            if spec.kind == "numeric":
                for value in feature.numbers(doc):
                    self._metrics.feature_value.observe(
                        (self.route, spec.name), spec.buckets, value
                    )
                continue
            bound = self._categories[spec.name]
            for category in feature.categories(doc):
                self._inc(self._metrics.feature_category, spec.name, bound.label(category))

    def _count_violations(self, role: str, broken: Iterable[str]) -> None:
        for name in broken:
            self._inc(self._metrics.invariant_violations, role, name)


def prediction_text(prediction: Any) -> str | None:
    """The prediction as JSON text for the row (None when there is none)."""
    if prediction is None:
        return None
    try:
        return orjson.dumps(prediction).decode()
    except (TypeError, orjson.JSONEncodeError):
        return None


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def route_watches(
    routes: Iterable[RouteConfig],
    metrics: RecorderMetrics,
    previous: dict[str, RouteWatch] | None = None,
) -> dict[str, RouteWatch]:
    """A watch per monitored route. A reload that leaves a route's monitor and compare
    blocks alone keeps its watch, so the first-N categories stay the same labels."""
    previous = previous or {}
    watches: dict[str, RouteWatch] = {}
    for route in routes:
        old = previous.get(route.name)
        if (
            old is not None
            and old.config == route.monitor
            and old._extract == Extractor.build(route.compare)
        ):
            watches[route.name] = old
            continue
        watch = RouteWatch.build(route, metrics)
        if watch is not None:
            watches[route.name] = watch
    return watches


def watched_cells(watch: RouteWatch, pair: Pair) -> dict[str, object]:
    """The monitor's columns of a watched request's pair. Production and the request are
    counted live only on its ``primary`` pair (once per request); each shadow's answer
    under the shadow's name."""
    request_violations = watch.request(pair.request, count=pair.primary)
    production = watch.production(pair.production, count=pair.primary)
    shadow = watch.shadow(pair)
    return {
        "prod_violations": production.violations,
        "shadow_violations": shadow.violations,
        "request_violations": request_violations,
        "model_version": production.model_version,
    }
