"""The exception tree of shadowproxy.

    ShadowproxyError
     ├── ConfigError          the configuration is wrong; carries file, field and what is wrong
     └── UpstreamError        the production upstream did not give an answer
          ├── UpstreamUnavailable   connect failure, reset, invalid HTTP   -> 502
          └── UpstreamTimeout       no answer within the route's timeout   -> 504

Shadow failures are not exceptions: they become an outcome on the recorded pair
(see ``shadowproxy.records``). Only ``shadowproxy.proxy.handler`` turns upstream errors into
HTTP responses.
"""

from __future__ import annotations


class ShadowproxyError(Exception):
    """Base of every error shadowproxy raises on purpose."""


class ConfigError(ShadowproxyError):
    """A configuration problem, located as precisely as the loader can.

    ``str(error)`` reads ``file: field: message`` so an operator can jump to the line.
    """

    def __init__(self, file: str | None, field: str | None, message: str) -> None:
        self.file = file
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.field, self.message) if part)


class UpstreamError(ShadowproxyError):
    """The production upstream failed to answer; the client gets a JSON error."""

    status = 502


class UpstreamUnavailable(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


def describe(exc: BaseException) -> str:
    """One line for a failure that becomes data (a row's error, a 502's message), capped
    so a huge message cannot bloat a record. Our own errors already say what failed;
    anything else is named by its class (``ConnectionResetError: ...``)."""
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, ShadowproxyError):
        return text[:500]
    return f"{exc.__class__.__name__}: {text}"[:500]
