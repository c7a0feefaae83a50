"""The request path: match a route, forward to production, tee copies to shadows.

``handler`` answers each request from production; ``tee`` fans sampled copies out to the
shadows (bounded, timed out, behind a ``breaker``); ``routing`` is the pure route
match; ``upstream`` turns an upstream call into an outcome; ``arms`` puts canary and
A/B assignment on the path; ``runtime`` is the immutable snapshot of routes, pools and
runners that a config builds and a reload swaps.
"""
