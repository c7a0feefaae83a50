"""How each route's pairs are recorded: redaction, body caps, decoding bound and chaos
corruption, compiled once per route (and again on reload)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from shadowproxy.compare.corrupt import corrupt_answer
from shadowproxy.compare.spec import CompareConfig
from shadowproxy.config import RouteConfig
from shadowproxy.recording.redact import Redactor
from shadowproxy.records import Pair


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """A route's ``record`` options, compiled for the writer, and what it compares
    (which part of an answer a chaos corruption must change)."""

    bodies: bool
    max_body_bytes: int
    redactor: Redactor
    compare: CompareConfig
    max_decoded_bytes: int | None
    """Bound on each decoded body; None: compressed bodies are not decoded."""

    @classmethod
    def from_config(cls, route: RouteConfig) -> RoutePolicy:
        record = route.record
        return cls(
            record.bodies,
            record.max_body_bytes,
            Redactor(record.redact),
            route.compare,
            route.max_decoded_bytes,
        )

    def corrupt(self, pair: Pair) -> Pair:
        """The pair with the shadow's answer corrupted (a chaos ``corrupt_prediction``)."""
        result = pair.result
        body = corrupt_answer(result.body, result.content_type, self.compare)
        return replace(pair, result=replace(result, body=body))


def route_policies(routes: Iterable[RouteConfig]) -> dict[str, RoutePolicy]:
    return {route.name: RoutePolicy.from_config(route) for route in routes}


UNKNOWN_ROUTE = RoutePolicy(
    bodies=False,
    max_body_bytes=0,
    redactor=Redactor(withhold_all=True),
    compare=CompareConfig(),
    max_decoded_bytes=None,
)
"""A pair from a route the recorder was not configured with: it cannot know what to
redact, so it keeps metadata only and the comparator sees no bodies (none is decoded)."""
