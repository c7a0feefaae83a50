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
                             └─► sink: compare, redact, record to Parquet (off the event loop)

Modules follow that path: ``config`` (YAML -> frozen models), ``routing`` and
``headers`` (pure rules), ``upstream`` (client pools), ``proxy`` (the handler), ``tee``
(shadow fan-out), ``records`` (the pair), ``metrics``, ``app`` (composition and
lifecycle), ``cli``.
"""

__version__ = "0.1.0"
