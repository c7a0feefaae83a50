"""shadowproxy: test candidate ML models on live traffic without risking production.

How a request travels::

    client ──► http.server ──► proxy.handler ────────────────► production upstream
                 (HTTP/1.1)      │  proxy.routing: match route       │ (http.client pool)
                                 │  read body once (capped)          │ answer, streamed back
                                 │                                   ▼
                                 │                                client
                                 └─► proxy.tee ──(sampled, bounded, timed out,
                                        │         proxy.breaker)──► shadow upstreams
                                        │
                                        └─ one records.Pair per (request, shadow), once both
                                           sides are known
                                             └─► recording.process ══pipe══► writer process
                                                   (recording.child): recording.redact ─►
                                                   compare ─► Parquet (recording.schema),
                                                   metrics back to /metrics

The tree reads like that path, one package per layer:

- top level: ``cli`` (thin CLI), ``loop`` (the one event-loop runner), ``app`` (the
  composition root: builds the objects, runs the listeners, shuts down in order, reloads),
  and what every layer shares: ``config`` (YAML -> frozen models), ``validation``,
  ``errors``, ``tasks``, ``metrics``, ``records``;
- ``http`` and ``grpc``: the wire level (inbound servers, outbound client pools and
  channels, header and metadata rules);
- ``proxy``: the request path (handler, tee, breaker, routing, upstream outcomes,
  experiment arms, the runtime snapshot a reload swaps);
- ``admin``: the admin app for one process or the ``serve --workers N`` supervisor;
- ``recording``: the writer process, the row schema, redaction, storage;
- ``compare``: extraction presets and comparators (pure);
- ``monitor``: watching a model without labels: the ``monitor:`` block, invariants,
  features and the category bound (pure; the writer runs it, ``recording.monitoring``);
- ``stats``: statistics shared by ``experiments`` and ``report`` (pure);
- ``experiments``: canary, A/B and chaos rules (pure);
- offline: ``report`` (reads recordings, never imported by the serving process) and
  ``demo``.

``pyproject.toml`` states these layers as import-linter contracts, checked by ``make lint``.
"""

__version__ = "0.1.0"
DISTRIBUTION = "shadowproxy-ml"
"""The name to install (``pip install 'shadowproxy-ml[report]'``): ``shadowproxy`` on the
package index is an unrelated project. The import package and the command are shadowproxy."""
