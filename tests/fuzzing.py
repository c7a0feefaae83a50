"""Hypothesis settings shared by the fuzz tests."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz(examples: int) -> settings:
    """``examples`` per test in CI, derandomized and storing nothing;
    ``SHADOWPROXY_FUZZ_EXAMPLES`` sets the count for a longer, random run."""
    override = os.environ.get("SHADOWPROXY_FUZZ_EXAMPLES")
    return settings(
        max_examples=int(override) if override else examples,
        derandomize=not override,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
