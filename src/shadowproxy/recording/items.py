"""What the recorder queues for the writer thread, and what each item costs in memory
(the unit of ``max_buffer_bytes``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shadowproxy.config import RouteConfig
from shadowproxy.records import Exposure, Observation, Pair


@dataclass(frozen=True, slots=True)
class Feedback:
    """One ``submit_feedback`` call: (request_id, label JSON text, received ts) items."""

    items: Sequence[tuple[str, str, float]]


@dataclass(frozen=True, slots=True)
class Routes:
    """A reload's routes: the pairs queued after it are redacted and compared by these."""

    routes: tuple[RouteConfig, ...]


Item = Pair | Exposure | Observation | Feedback | Routes


ITEM_OVERHEAD_BYTES = 512
"""What a record costs in memory beyond its bodies (objects, row dict, Arrow columns)."""


def item_bytes(item: Item) -> int:
    """A record's estimated memory, the unit of ``max_buffer_bytes``. Cheap (lengths
    only), and the same on both sides of the hand-off, so the two counts cancel out."""
    if isinstance(item, Pair):
        return (
            ITEM_OVERHEAD_BYTES
            + len(item.request.body or b"")
            + len(item.production.body or b"")
            + len(item.result.body or b"")
        )
    if isinstance(item, Feedback):
        return sum(ITEM_OVERHEAD_BYTES + len(label) for _, label, _ in item.items)
    return ITEM_OVERHEAD_BYTES
