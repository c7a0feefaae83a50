"""shadowproxy: test candidate ML models on live traffic without risking production.

How a request travels::

    client ──► proxy.ProxyHandler ─────────────► production upstream
                 │  routing: match route,             │
                 │  read body once (capped)           │ answer, streamed back
                 │                                    ▼
                 │                                 client
                 └─► tee.Tee ──(sampled, bounded, timed out, circuit-broken)──► shadow upstreams
                        │
                        └─ one records.Pair per (request, shadow), once both sides are known
                             └─► recording.process ══pipe══► writer process (recording.child):
                                   redact ─► compare ─► Parquet, metrics back to /metrics

Modules follow that path: ``config`` (YAML -> frozen models), ``server`` (the traffic
port's HTTP/1.1 server), ``routing`` and ``headers`` (pure rules), ``upstream`` and
``http1`` (client pools), ``proxy`` (the handler), ``tee`` (shadow fan-out),
``records`` (the pair), ``recording`` (the writer, ``schema`` its rows), ``compare``
(extraction and comparators), ``metrics``,
``runtime`` (the snapshot of routes, pools and runners a config builds, swapped on
reload), ``app`` (composition and lifecycle), ``cli``; offline: ``report``, ``demo``.
``chaos`` holds the rules that inject faults on purpose (into copies, in ``tee``; into
production, in ``proxy``; corrupted answers, in the writer). ``experiments`` holds the
pure rules of canary and A/B routes (assignment, guardrails, the canary state machine)
and ``experiment_runtime`` puts them on the request path. ``supervisor`` runs
``serve --workers N`` (``metrics_merge`` merges the workers' metrics).
gRPC calls take the same path from their own listener: ``grpc`` (the wire level: the
listener with generic handlers and health, outbound channels, metadata rules),
``proxy.grpc_handler`` (match, size check, tee, production), the same tee, pairs and
recording; ``compare.inference_grpc`` decodes Open Inference messages for comparison.
"""

__version__ = "0.1.0"
