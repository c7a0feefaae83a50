"""Every Prometheus metric shadowproxy exports, on an injected registry.

Label values come only from config names (route, shadow), fixed vocabularies (role,
outcome, result, reason) or HTTP status codes: never from paths, ids or model output,
so the series count stays bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# The `_created` series double the scrape size and no dashboard or alert uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
DIFF_SCORE_BUCKETS = (0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0, 100.0)

UNMATCHED_ROUTE = "_unmatched"
DEFAULT_ROUTE = "_default"
RELOAD_RESULTS = ("success", "failure")


REJECT_REASONS = ("bad_request", "header_too_large", "header_timeout", "upgrade")
GRPC_REJECT_REASONS = ("grpc_max_concurrent_calls",)
"""Refusals of the gRPC listener before routing (those gRPC's core makes of bytes that
are not HTTP/2 never reach Python and are not counted)."""


class BucketedHistogram(Collector):
    """A histogram family whose series each bring their own buckets.

    ``prometheus_client.Histogram`` fixes one bucket list per family, but a route's
    predictions (prices, probabilities) and each feature have scales of their own, set
    in the route's ``monitor:`` block. The exposition is a normal histogram; only the
    ``le`` values differ between series. Observed from the writer thread, collected
    from the scrape: a lock keeps a series' buckets, sum and count consistent.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[tuple[float, ...], list[float]]] = {}
        registry.register(self)

    def observe(self, labels: Sequence[str], buckets: Sequence[float], value: float) -> None:
        """Count ``value`` in the series ``labels``, whose buckets are ``buckets``."""
        key = tuple(labels)
        with self._lock:
            series = self._series.get(key)
            if series is None or series[0] != tuple(buckets):
                series = self._series[key] = (tuple(buckets), [0.0] * (len(buckets) + 2))
            edges, counts = series
            for index, edge in enumerate(edges):
                if value <= edge:
                    counts[index] += 1
                    break
            else:
                counts[len(edges)] += 1
            counts[-1] += value

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(key, edges, list(counts)) for key, (edges, counts) in self._series.items()]
        for key, edges, counts in snapshot:
            cumulative, buckets = 0.0, []
            for edge, count in zip((*edges, float("inf")), counts[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if edge == float("inf") else repr(float(edge)), cumulative))
            family.add_metric(list(key), buckets, sum_value=counts[-1])
        yield family


class RecorderMetrics:
    """The metrics the recorder produces: verdicts, Parquet output, drops, health.

    The writer process registers only these, so its exposition, served through the
    proxy's ``/metrics``, adds families the proxy does not have and repeats none.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.comparisons = Counter(
            "shadowproxy_comparisons",
            "Compared pairs by result (agree|disagree|incomparable).",
            ["route", "shadow", "result"],
            registry=registry,
        )
        self.diff_score = Histogram(
            "shadowproxy_diff_score",
            "Comparator-specific difference between shadow and production (0 = identical).",
            ["route", "shadow"],
            buckets=DIFF_SCORE_BUCKETS,
            registry=registry,
        )
        self.records_written = Counter(
            "shadowproxy_records_written",
            "Records that reached a complete Parquet file, by kind (pairs|exposures|feedback).",
            ["kind"],
            registry=registry,
        )
        self.records_dropped = Counter(
            "shadowproxy_records_dropped",
            "Records lost on purpose, by reason "
            "(queue_full|buffer_full|write_failed|shutdown|writer_died).",
            ["reason"],
            registry=registry,
        )
        self.body_decode_failures = Counter(
            "shadowproxy_body_decode_failures",
            "Compressed bodies of recorded pairs left as sent, by body (request|production|"
            "shadow) and reason (too_large|truncated|corrupt|unsupported); each makes its "
            "pair incomparable.",
            ["route", "body", "reason"],
            registry=registry,
        )
        self.recorder_pending = Gauge(
            "shadowproxy_recorder_pending_records",
            "Records buffered in memory, waiting for the writer.",
            registry=registry,
        )
        self.recorder_write_errors = Counter(
            "shadowproxy_recorder_write_errors",
            "Failed attempts to write a Parquet file (retried with backoff).",
            registry=registry,
        )
        self.recorder_degraded = Gauge(
            "shadowproxy_recorder_degraded",
            "1 while the recorder cannot write (disk full, permissions, bucket unreachable).",
            registry=registry,
        )
        # Monitoring without labels (a route's monitor: block). Class and category
        # values are bounded per route by max_categories plus "other".
        self.monitored = Counter(
            "shadowproxy_monitored",
            "Answers watched by the route's monitor, by role (production|<shadow>|request: "
            "requests): the denominator of the violation rates.",
            ["route", "role"],
            registry=registry,
        )
        self.prediction_value = BucketedHistogram(
            "shadowproxy_prediction_value",
            "Numeric predictions (each row of a batch), buckets from monitor.prediction.buckets.",
            ["route", "role"],
            registry,
        )
        self.predicted_class = Counter(
            "shadowproxy_predicted_class",
            "Predicted classes (each row of a batch); max_categories values plus 'other'.",
            ["route", "role", "class"],
            registry=registry,
        )
        self.feature_value = BucketedHistogram(
            "shadowproxy_feature_value",
            "Numeric request features (every match of the feature's path).",
            ["route", "feature"],
            registry,
        )
        self.feature_category = Counter(
            "shadowproxy_feature_category",
            "Categorical request features; max_categories values plus 'other'.",
            ["route", "feature", "category"],
            registry=registry,
        )
        self.model_version_answers = Counter(
            "shadowproxy_model_version_answers",
            "Watched production answers by the model_version they carry (monitor.version); "
            "at most 20 versions per route, then 'other'. A new series marks a release.",
            ["route", "version"],
            registry=registry,
        )
        self.invariant_violations = Counter(
            "shadowproxy_invariant_violations",
            "Watched answers (role production|<shadow>) or requests (role request) that "
            "broke an invariant; once per request and rule.",
            ["route", "role", "invariant"],
            registry=registry,
        )


class Metrics(RecorderMetrics):
    """Everything one proxy process exports: its own metrics and the recorder's."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        recorder_registry: CollectorRegistry | None = None,
    ) -> None:
        """``recorder_registry``: where the comparison and recording metrics live when
        they are not this process's to export (the writer process serves them)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        rr = recorder_registry if recorder_registry is not None else r
        self.requests = Counter(
            "shadowproxy_requests",
            "Client requests answered, by route and HTTP status sent to the client (route "
            "_default: the default upstream, _unmatched: no route (404); code 499: the client "
            "left before its answer ended, mid-stream included; gRPC calls: the HTTP "
            "equivalent, and grpc_status the code name; empty for HTTP).",
            ["route", "code", "grpc_status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "shadowproxy_request_duration_seconds",
            "Time from request arrival to the end of the response, as the client sees it.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "shadowproxy_upstream_duration_seconds",
            "Time an upstream took to answer (production: until its response ended). role "
            "production (target production) or shadow (target: the shadow's name; successful "
            "copies; a canary's disagreement copies are target production, role shadow).",
            ["route", "target", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_requests = Counter(
            "shadowproxy_shadow_requests",
            "Shadow decisions for sampled requests, by outcome (ok|error|timeout|dropped|skipped).",
            ["route", "shadow", "outcome"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "shadowproxy_shadow_skipped",
            "Sampled copies not sent, by reason (circuit_open|body_too_large|shutdown|streaming).",
            ["route", "shadow", "reason"],
            registry=r,
        )
        self.shadow_in_flight = Gauge(
            "shadowproxy_shadow_in_flight",
            "Shadow copies currently in flight (bounded by max_in_flight).",
            ["route", "shadow"],
            registry=r,
        )
        self.experiment_requests = Counter(
            "shadowproxy_experiment_requests",
            "Requests on canary and A/B routes by the arm that answered (production: "
            "outside the experiment's share, or the canary's other side).",
            ["route", "arm"],
            registry=r,
        )
        self.canary_percent = Gauge(
            "shadowproxy_canary_percent",
            "Percent of a canary route's traffic the candidate answers now (0 after a rollback).",
            ["route"],
            registry=r,
        )
        self.canary_decisions = Counter(
            "shadowproxy_canary_decisions",
            "Canary decisions by action (advance|complete|rollback|pause and operator actions).",
            ["route", "action"],
            registry=r,
        )
        self.rejected_requests = Counter(
            "shadowproxy_rejected_requests",
            "Client requests refused before routing, by reason (bad_request: 400, "
            "header_too_large: 431, header_timeout: 408, upgrade: 501, a WebSocket upgrade "
            "or CONNECT; grpc_max_concurrent_calls: a gRPC call over the limit).",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:
            self.rejected_requests.labels(reason)
        self.shadow_circuit_open = Gauge(
            "shadowproxy_shadow_circuit_open",
            "1 while a shadow's circuit breaker is open or probing (copies are skipped), else 0.",
            ["route", "shadow"],
            registry=r,
        )
        self.chaos_injected = Counter(
            "shadowproxy_chaos_injected",
            "Faults injected on purpose by chaos rules, by target (a shadow's name or "
            "production) and fault (delay|abort|corrupt).",
            ["route", "target", "fault"],
            registry=r,
        )
        self.shadow_info = Gauge(
            "shadowproxy_shadow_info",
            "One series per configured shadow, carrying its role (candidate|baseline), to join on.",
            ["route", "shadow", "role"],
            registry=r,
        )
        self.config_reloads = Counter(
            "shadowproxy_config_reloads",
            "Config reloads (SIGHUP or POST /reload) by result (success|failure).",
            ["result"],
            registry=r,
        )
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
        self.config_last_reload_successful = Gauge(
            "shadowproxy_config_last_reload_successful",
            "0 after a rejected reload (the previous config keeps serving), else 1.",
            registry=r,
        )
        self.config_last_reload_success = Gauge(
            "shadowproxy_config_last_reload_success_timestamp_seconds",
            "When the config now serving was loaded (start or reload), in Unix seconds.",
            registry=r,
        )
        super().__init__(rr)


class WorkerMetrics:
    """The supervisor's own series (``serve --workers N``), beside the workers' merged ones."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.workers = Gauge(
            "shadowproxy_workers",
            "Worker processes running (serve --workers N only).",
            registry=registry,
        )
        self.restarts = Counter(
            "shadowproxy_worker_restarts",
            "Worker processes restarted after they exited on their own (serve --workers N only).",
            registry=registry,
        )
