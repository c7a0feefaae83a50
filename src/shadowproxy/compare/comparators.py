"""Every comparator by name, and ``judge``: the one call that never raises on JSON.

A comparator takes production's and the shadow's predictions (decoded JSON values) and
the route's options, and returns a ``Verdict``. Inside, "these values do not fit me"
is raised as ``Incomparable``; ``judge`` turns it, and the two ways arbitrary JSON can
still break arithmetic (integers too large for a float, nesting deeper than Python
recurses), into an incomparable verdict with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shadowproxy.compare import auto
from shadowproxy.compare.embedding import embedding
from shadowproxy.compare.exact import first_difference
from shadowproxy.compare.label import label
from shadowproxy.compare.numeric import numeric
from shadowproxy.compare.scores import probabilities, ranking
from shadowproxy.compare.spec import PRESET_KINDS, RAW, CompareConfig, Kind
from shadowproxy.compare.text import text
from shadowproxy.compare.verdict import (
    Incomparable,
    Item,
    Verdict,
    combine,
    incomparable,
    pair_batches,
)

Comparator = Callable[[Any, Any, CompareConfig], Verdict]


def exact(prod: Any, shadow: Any, config: CompareConfig) -> Verdict:
    """JSON equality per item (see ``exact``); ``diff_score`` 0 when equal, else 1."""
    pairing = pair_batches(prod, shadow)
    if isinstance(pairing, Verdict):
        return pairing
    p_items, s_items, is_batch = pairing
    items: list[Item] = []
    for x, y in zip(p_items, s_items, strict=True):
        found = first_difference(x, y)
        items.append(Item(True, 0.0) if found is None else Item(False, 1.0, found[1], found[0]))
    return combine(items, is_batch)


COMPARATORS: dict[str, Comparator] = {
    "exact": exact,
    "numeric": numeric,
    "label": label,
    "probabilities": probabilities,
    "ranking": ranking,
    "text": text,
    "embedding": embedding,
}


def resolve(kind: Kind, prod: Any, prediction: str = RAW) -> tuple[str, str]:
    """``(comparator to run, name to report)``: ``auto`` becomes e.g. ``auto:numeric``;
    a preset in ``PRESET_KINDS`` decides instead of ``prod``'s types."""
    if kind != "auto":
        return kind, kind
    picked = PRESET_KINDS.get(prediction) or auto.pick(prod)
    return picked, f"auto:{picked}"


def judge(kind: str, prod: Any, shadow: Any, config: CompareConfig) -> Verdict:
    """Run comparator ``kind`` (not ``auto``: ``resolve`` first); never raises on JSON."""
    try:
        return COMPARATORS[kind](prod, shadow, config)
    except Incomparable as exc:
        return incomparable(exc.reason)
    except OverflowError:
        return incomparable("prediction has a number too large to compare")
    except RecursionError:
        return incomparable("prediction is nested too deep")
