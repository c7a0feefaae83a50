from __future__ import annotations

from shadowproxy.config import CircuitBreakerConfig
from shadowproxy.proxy.breaker import CircuitBreaker


def test_opens_after_consecutive_failures_and_probes_after_backoff() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(failures=3, backoff_s=5, max_backoff_s=20))
    for now in range(3):
        assert breaker.allow(now)
        breaker.record(False, now)
    assert breaker.state == "open"
    assert not breaker.allow(3.0)
    assert not breaker.allow(6.9)
    assert breaker.allow(7.0)  # the single half-open probe
    assert breaker.state == "half-open"
    assert not breaker.allow(7.0)
    breaker.record(False, 7.5)  # probe failed: backoff doubles
    assert not breaker.allow(17.4)
    assert breaker.allow(17.5)
    breaker.record(False, 18)
    breaker.record(False, 18)
    assert not breaker.allow(37.9)  # capped at max_backoff_s
    assert breaker.allow(38.0)
    breaker.record(True, 38.1)
    assert breaker.state == "closed"
    assert breaker.allow(38.2)


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(failures=2))
    breaker.record(False, 0)
    breaker.record(True, 1)
    breaker.record(False, 2)
    assert breaker.state == "closed"
