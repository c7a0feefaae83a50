"""Assignment: stable hashes, a canary slice that only grows, weighted sticky arms,
experiments of one layer that never share a user, and layers that are independent."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.experiments.assign import (
    assign_arm,
    bucket,
    choose_arm,
    in_canary,
    pick_weighted,
)
from shadowproxy.experiments.spec import ABSpec

KEYS = [f"user-{i}" for i in range(100_000)]
HALVES = (("control", 50.0), ("treatment", 50.0))


def test_bucket_is_pinned_and_in_range() -> None:
    # Pinned values: a change here moves every user to another group on upgrade.
    assert bucket("user-42", "canary:price") == 0.9694895980812739
    assert bucket("", "x") == 0.3622902973632626
    assert bucket("é\udcff", "layer:ranking") == 0.06000855386780033  # a lone surrogate hashes too
    assert bucket("user-42", "canary:price") != bucket("user-42", "canary:pricing")


def test_bucket_does_not_depend_on_the_process() -> None:
    """Python's own str hash is salted per process; the assignment must not be."""
    code = "from shadowproxy.experiments.assign import bucket; print(repr(bucket('user-42', 'canary:price')))"
    env = {**os.environ, "PYTHONHASHSEED": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "0.9694895980812739"


def test_buckets_are_uniform() -> None:
    points = [bucket(key, "layer:a") for key in KEYS[:20_000]]
    assert all(0.0 <= p < 1.0 for p in points)
    deciles = Counter(int(p * 10) for p in points)
    assert all(1850 <= deciles[d] <= 2150 for d in range(10)), deciles


def test_canary_slice_only_grows() -> None:
    steps = [1, 5, 25, 50, 100]
    members = [
        {key for key in KEYS[:20_000] if in_canary(key, percent, "price")} for percent in steps
    ]
    for smaller, larger in itertools.pairwise(members):
        assert smaller <= larger  # a user in the 5% slice stays in at 25%
    for percent, chosen in zip(steps, members, strict=True):
        assert abs(len(chosen) / 20_000 - percent / 100) < 0.01


@given(st.text(max_size=20), st.floats(0, 100), st.floats(0, 100))
def test_canary_membership_is_monotone_in_percent(key: str, a: float, b: float) -> None:
    low, high = min(a, b), max(a, b)
    assert not in_canary(key, low, "price") or in_canary(key, high, "price")


def test_canary_extremes_and_random_without_a_key() -> None:
    assert not any(in_canary(key, 0, "price") for key in KEYS[:1000])
    assert all(in_canary(key, 100, "price") for key in KEYS[:1000])
    rng = random.Random(3)
    share = sum(in_canary(None, 25, "price", rng) for _ in range(20_000)) / 20_000
    assert abs(share - 0.25) < 0.015


def test_canaries_of_different_routes_pick_different_users() -> None:
    a = {key for key in KEYS[:20_000] if in_canary(key, 10, "price")}
    b = {key for key in KEYS[:20_000] if in_canary(key, 10, "rank")}
    assert abs(len(a & b) / 20_000 - 0.01) < 0.003  # independent: 10% of 10%


def test_arms_are_sticky_and_weighted() -> None:
    weights = (("a", 1.0), ("b", 1.0), ("c", 2.0))
    arms = [choose_arm(key, "l", "exp", weights) for key in KEYS[:20_000]]
    assert arms == [choose_arm(key, "l", "exp", weights) for key in KEYS[:20_000]]
    counts = Counter(arms)
    assert abs(counts["a"] / 20_000 - 0.25) < 0.015
    assert abs(counts["c"] / 20_000 - 0.5) < 0.015


def test_random_arms_without_a_key() -> None:
    rng = random.Random(5)
    counts = Counter(choose_arm(None, "l", "exp", HALVES, rng=rng) for _ in range(10_000))
    assert abs(counts["control"] - 5000) < 300 and counts[None] == 0


def test_experiments_in_one_layer_never_share_a_user() -> None:
    shares = {"e1": (0.0, 0.2), "e2": (0.2, 0.7), "e3": (0.7, 1.0)}
    seen: Counter[str] = Counter()
    for key in KEYS[:30_000]:
        arms = {
            name: choose_arm(key, "ranking", name, HALVES, share=share)
            for name, share in shares.items()
        }
        joined = [name for name, arm in arms.items() if arm is not None]
        assert len(joined) == 1, (key, arms)  # exactly one: disjoint shares that cover the layer
        seen[joined[0]] += 1
    assert abs(seen["e1"] / 30_000 - 0.2) < 0.01 and abs(seen["e2"] / 30_000 - 0.5) < 0.01


def test_the_arm_split_inside_a_share_follows_the_weights() -> None:
    arms = Counter(
        choose_arm(key, "ranking", "e1", HALVES, share=(0.0, 0.2)) for key in KEYS[:50_000]
    )
    assert abs(arms["control"] / (arms["control"] + arms["treatment"]) - 0.5) < 0.02


def test_different_layers_are_independent() -> None:
    xs = [bucket(key, "layer:ranking") for key in KEYS]
    ys = [bucket(key, "layer:search") for key in KEYS]
    n = len(KEYS)
    mx, my = sum(xs) / n, sum(ys) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / n
    var_x = sum((x - mx) ** 2 for x in xs) / n
    var_y = sum((y - my) ** 2 for y in ys) / n
    assert abs(cov / (var_x * var_y) ** 0.5) < 0.01  # ~3 standard errors at n = 100k

    pairs = Counter(
        (choose_arm(key, "ranking", "e", HALVES), choose_arm(key, "search", "e", HALVES))
        for key in KEYS[:20_000]
    )
    # Each of the four combinations near a quarter: knowing one arm says nothing of the other.
    assert all(abs(count / 20_000 - 0.25) < 0.015 for count in pairs.values()), pairs


def test_pick_weighted_edges() -> None:
    assert pick_weighted(0.0, HALVES) == "control"
    assert pick_weighted(0.4999, HALVES) == "control"
    assert pick_weighted(0.5, HALVES) == "treatment"
    assert pick_weighted(1.0 - 1e-17, HALVES) == "treatment"
    with pytest.raises(ValueError, match="positive weight"):
        pick_weighted(0.5, ())


def test_assign_arm_uses_the_spec() -> None:
    arms = [
        {"name": "control", "url": "http://h:1", "weight": 1},
        {"name": "treatment", "url": "http://h:2", "weight": 1},
    ]
    half = ABSpec.model_validate({"arms": arms, "layer": "ranking", "layer_share": [0, 0.5]})
    other = ABSpec.model_validate({"arms": arms, "layer": "ranking", "layer_share": [0.5, 1]})
    for key in KEYS[:2000]:
        assert (assign_arm(half, "rank", key) is None) != (assign_arm(other, "rank2", key) is None)
    whole = ABSpec.model_validate({"arms": arms})
    assert all(assign_arm(whole, "rank", key) in ("control", "treatment") for key in KEYS[:2000])
