"""Who gets which upstream: sticky, hash-based assignment for canaries and A/B tests.

A key (the value of the ``assignment_key`` header, e.g. a user id) is hashed with a
salt into a point in [0, 1). blake2b rather than ``hash()``: Python's string hash is
randomised per process, and a user must land in the same place in every worker and
after every restart. Without a key the point is random per request.

- Canary: the candidate answers when ``point(key, route) * 100 < percent``. The point
  does not depend on the percentage, so raising it only adds users: whoever had the
  candidate at 5% still has it at 25%.
- A/B: a layer's salt puts each user at one point of the layer; each experiment in the
  layer owns a disjoint ``layer_share`` [start, end) of it, so two experiments of one
  layer never see the same user. Inside its share, a second hash salted with the layer
  and the experiment picks the arm by weight, so the arm split does not depend on where
  the share lies. Different layers use different salts and assign independently.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from shadowproxy.experiments.spec import ABSpec

_PERSON = b"sp-experiments"
"""blake2b personalisation: keeps these points apart from any other hash of the same
text (``routing.sample_point`` hashes shadow names with the same layout)."""


def bucket(key: str, salt: str) -> float:
    """A point in [0, 1) that depends only on ``salt`` and ``key``."""
    data = f"{salt}\x00{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") / 2**64


def point(key: str | None, salt: str, rng: random.Random | None = None) -> float:
    """``bucket(key, salt)``, or a random point when there is no key."""
    if key is None:
        return (rng or random).random()
    return bucket(key, salt)


def in_canary(key: str | None, percent: float, salt: str, rng: random.Random | None = None) -> bool:
    """Whether the candidate answers this request at ``percent`` (0..100).

    ``salt`` is the route name: fixed for the canary's life, so the slice only grows.
    """
    if percent <= 0.0:
        return False
    if percent >= 100.0:
        return True
    return point(key, f"canary:{salt}", rng) * 100.0 < percent


def pick_weighted(value: float, weights: Sequence[tuple[str, float]]) -> str:
    """The name whose cumulative weight interval holds ``value`` in [0, 1)."""
    total = sum(weight for _, weight in weights)
    if not weights or total <= 0.0:
        raise ValueError("weights must name at least one arm with a positive weight")
    target = value * total
    running = 0.0
    for name, weight in weights:
        running += weight
        if target < running:
            return name
    return weights[-1][0]  # value * total rounded up to total


def choose_arm(
    key: str | None,
    layer: str,
    experiment: str,
    weights: Sequence[tuple[str, float]],
    *,
    share: tuple[float, float] = (0.0, 1.0),
    rng: random.Random | None = None,
) -> str | None:
    """The arm of ``experiment`` for this key, or None when the key falls outside the
    experiment's ``share`` of ``layer`` (the request then goes to production)."""
    start, end = share
    position = point(key, f"layer:{layer}", rng)
    if not start <= position < end:
        return None
    return pick_weighted(point(key, f"arm:{layer}:{experiment}", rng), weights)


def assign_arm(
    spec: ABSpec, experiment: str, key: str | None, rng: random.Random | None = None
) -> str | None:
    """``choose_arm`` for a route's ``ab:`` block; ``experiment`` is the route name."""
    return choose_arm(
        key,
        spec.layer_of(experiment),
        experiment,
        spec.weights,
        share=spec.layer_share,
        rng=rng,
    )
