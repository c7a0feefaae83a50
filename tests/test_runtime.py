"""Snapshots: what a reload reuses, what it replaces, and when dropped pools close."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from shadowproxy.config import Config, load_config
from shadowproxy.errors import ConfigError
from shadowproxy.http.client import Pool
from shadowproxy.metrics import Metrics
from shadowproxy.proxy.runtime import Retirer, Snapshot, build, check_reloadable
from shadowproxy.proxy.upstream import Pools
from tests.support import route, write_config

PROD = "http://127.0.0.1:8001"
OTHER = "http://127.0.0.1:8002"
SHADOW = "http://127.0.0.1:8003"


class RecordingPools(Pools):
    """Pools that remember which were closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[Pool] = []

    async def close(self, pools: Iterable[Pool] | None = None) -> None:
        if pools is not None:
            pools = list(pools)
            self.closed += pools
        await super().close(pools)


def config(tmp_path: Path, *routes: dict[str, Any], **main: Any) -> Config:
    return load_config(write_config(tmp_path, list(routes), **main), environ={})


def shadow(**settings: Any) -> dict[str, Any]:
    return {"name": "s", "url": SHADOW, **settings}


def only_runner(snapshot: Snapshot) -> Any:
    (runner,) = snapshot.runners()
    return runner


async def test_unchanged_settings_keep_pools_lanes_and_runners(tmp_path: Path) -> None:
    metrics, pools = Metrics(), Pools()
    same = config(tmp_path, route("m", PROD, [shadow()]), route("n", PROD), default_upstream=PROD)
    first = build(same, metrics, pools)
    second = build(same, metrics, pools, previous=first)
    assert second is not first
    # Routes and the default upstream on one origin share one production pool.
    assert len(first.production) == 1
    assert first.routes["m"].pool is first.routes["n"].pool is first.default.pool  # type: ignore[union-attr]
    assert second.pools() == first.pools()
    assert only_runner(second) is only_runner(first)
    await pools.close()


async def test_a_sample_rate_change_keeps_the_lane_and_its_state(tmp_path: Path) -> None:
    metrics, pools = Metrics(), Pools()
    first = build(config(tmp_path, route("m", PROD, [shadow()])), metrics, pools)
    old = only_runner(first)
    old.lane.in_flight = 3
    second = build(
        config(tmp_path, route("m", PROD, [shadow(sample_rate=0.5)])), metrics, pools, first
    )
    new = only_runner(second)
    assert new is not old and new.config.sample_rate == 0.5
    # One pool, one in-flight bound, one breaker, whichever runner sent the copy.
    assert new.lane is old.lane and new.in_flight == 3 and new.breaker is old.breaker
    await pools.close()


def checked_canary(sample_rate: float | None) -> dict[str, Any]:
    """A canary route with a disagreement guardrail (None: without one)."""
    canary: dict[str, Any] = {"candidate": {"name": "v2", "url": OTHER}}
    if sample_rate is not None:
        canary["guardrails"] = [{"metric": "disagreement", "max": 0.05, "sample_rate": sample_rate}]
    return route("c", PROD, [shadow()], mode="canary", canary=canary)


async def test_a_canary_disagreement_check_is_a_runner_reloads_reuse(tmp_path: Path) -> None:
    metrics, pools = Metrics(), Pools()
    first = build(config(tmp_path, checked_canary(0.5)), metrics, pools)
    runtime = first.routes["c"]
    check = runtime.check
    assert check is not None and check.config.name == "production"
    assert (check.config.url, check.config.sample_rate) == (PROD, 0.5)
    # Only the candidate's variant sends it; production-served requests copy the route's own.
    assert [r.config.name for r in runtime.shadows] == ["s"]
    assert [r.config.name for r in runtime.variants["v2"].shadows] == ["s", "production"]
    assert {r.config.name for r in first.runners()} == {"s", "production"}
    check.lane.in_flight = 2
    second = build(config(tmp_path, checked_canary(0.5)), metrics, pools, first)
    assert second.routes["c"].check is check
    third = build(config(tmp_path, checked_canary(0.1)), metrics, pools, second)
    new = third.routes["c"].check
    assert new is not None and new is not check and new.config.sample_rate == 0.1
    assert new.lane is check.lane and new.in_flight == 2
    fourth = build(config(tmp_path, checked_canary(None)), metrics, pools, third)
    assert fourth.routes["c"].check is None
    assert [r.config.name for r in fourth.routes["c"].variants["v2"].shadows] == ["s"]
    await pools.close()


async def test_a_circuit_breaker_change_resets_the_breaker_only(tmp_path: Path) -> None:
    metrics, pools = Metrics(), Pools()
    first = build(config(tmp_path, route("m", PROD, [shadow()])), metrics, pools)
    old = only_runner(first)
    breaker = old.breaker
    changed = shadow(circuit_breaker={"failures": 2})
    second = build(config(tmp_path, route("m", PROD, [changed])), metrics, pools, first)
    new = only_runner(second)
    assert new.lane is old.lane and new.breaker is not breaker
    assert new.breaker.config.failures == 2
    await pools.close()


@pytest.mark.parametrize("change", [{"url": OTHER}, {"max_in_flight": 8}])
async def test_a_new_url_or_bound_opens_a_new_lane(tmp_path: Path, change: dict[str, Any]) -> None:
    metrics, pools = Metrics(), Pools()
    first = build(config(tmp_path, route("m", PROD, [shadow()])), metrics, pools)
    second = build(config(tmp_path, route("m", PROD, [shadow(**change)])), metrics, pools, first)
    assert only_runner(second).lane is not only_runner(first).lane
    assert first.routes["m"].pool is second.routes["m"].pool
    await pools.close()


async def test_pool_settings_or_origin_changes_open_new_production_pools(tmp_path: Path) -> None:
    metrics, pools = Metrics(), Pools()
    first = build(config(tmp_path, route("m", PROD)), metrics, pools)
    resized = build(
        config(tmp_path, route("m", PROD), upstream_pool={"max_connections": 5}),
        metrics,
        pools,
        first,
    )
    moved = build(
        config(tmp_path, route("m", OTHER), upstream_pool={"max_connections": 5}),
        metrics,
        pools,
        resized,
    )
    assert resized.routes["m"].pool is not first.routes["m"].pool
    assert resized.routes["m"].pool.max_connections == 5
    assert moved.routes["m"].pool is not resized.routes["m"].pool
    await pools.close()


async def test_dropped_pools_close_once_no_older_snapshot_or_copy_uses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shadowproxy.proxy.runtime.RETIRE_POLL_S", 0.01)
    metrics, pools = Metrics(), RecordingPools()
    retirer = Retirer(pools, metrics)
    a = build(config(tmp_path, route("m", PROD, [shadow()])), metrics, pools)
    # b keeps a's production pool and drops the shadow; c drops the production pool.
    b = build(config(tmp_path, route("m", PROD)), metrics, pools, a)
    c = build(config(tmp_path, route("m", OTHER)), metrics, pools, b)
    a.in_flight, b.in_flight = 1, 1
    lane = only_runner(a).lane
    lane.in_flight = 1
    retirer.retire(a, b)
    retirer.retire(b, c)
    await asyncio.sleep(0.05)
    assert pools.closed == []
    b.in_flight = 0
    await asyncio.sleep(0.05)
    assert pools.closed == []  # a request of a may still use both
    a.in_flight = 0
    await asyncio.sleep(0.05)
    assert pools.closed == [a.routes["m"].pool]  # a's copy still holds the shadow's pool
    lane.in_flight = 0
    await asyncio.sleep(0.05)
    assert pools.closed == [a.routes["m"].pool, lane.pool]
    assert c.routes["m"].pool not in pools.closed
    await retirer.close()
    await pools.close()


def test_check_reloadable_names_the_field(tmp_path: Path) -> None:
    running = config(tmp_path, route("m", PROD))
    check_reloadable(running, config(tmp_path, route("n", OTHER), drain_timeout_s=1))
    changed = config(tmp_path, route("m", PROD), recording={"dir": "x", "flush_interval_s": 1})
    with pytest.raises(ConfigError) as caught:
        check_reloadable(running, changed)
    assert caught.value.field == "recording.dir"
    assert caught.value.file == str(tmp_path / "shadowproxy.yaml")
