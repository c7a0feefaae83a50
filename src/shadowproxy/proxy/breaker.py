"""Per-shadow circuit breaker: a shadow that keeps failing becomes cheap.

Without it every copy to a dead shadow pays a failed connect plus an exception; a
plain aiohttp tee proxy's p99 rose fivefold with its shadow down. Pure state machine:
the caller passes the clock in.
"""

from __future__ import annotations

from shadowproxy.config import CircuitBreakerConfig


class CircuitBreaker:
    """closed -> (``failures`` in a row) -> open for ``backoff`` -> half-open: one probe.

    A failed probe reopens with double the backoff (up to ``max_backoff_s``); a
    successful one closes the circuit and resets the backoff.
    """

    __slots__ = ("_backoff", "_config", "_failures", "_open_until", "_probing")

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self._config = config
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self._backoff = config.backoff_s

    @property
    def config(self) -> CircuitBreakerConfig:
        return self._config

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "half-open" if self._probing else "open"

    def allow(self, now: float) -> bool:
        """May a copy be sent now? In half-open state, only one probe at a time."""
        if self._open_until is None:
            return True
        if self._probing or now < self._open_until:
            return False
        self._probing = True
        return True

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self._failures = 0
            self._open_until = None
            self._probing = False
            self._backoff = self._config.backoff_s
            return
        self._failures += 1
        if self._probing:
            self._probing = False
            self._backoff = min(self._backoff * 2, self._config.max_backoff_s)
            self._open_until = now + self._backoff
        elif self._open_until is None and self._failures >= self._config.failures:
            self._open_until = now + self._backoff
