"""Canary and A/B routes on the real proxy: who answers, what is recorded, what is decided."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shadowproxy import experiment_runtime
from tests.support import RunningProxy, route, running_proxy, upstream, write_config

EVALUATE_EVERY_S = 0.1


@pytest.fixture(autouse=True)
def evaluate_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller looks every second in production; a test need not wait that long."""
    monkeypatch.setattr(experiment_runtime, "EVALUATE_EVERY_S", EVALUATE_EVERY_S)


def answering(name: str, error_every: int = 0) -> web.RequestHandler:  # type: ignore[type-arg]
    """An upstream that names itself; every ``error_every``-th answer is a 500."""
    seen = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        if error_every and seen % error_every == 0:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({"predictions": [name]})

    return handle


async def test_ab_route_assigns_sticky_arms_answers_from_them_and_records_exposures(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with (
        upstream(answering("production")) as production,
        upstream(answering("control")) as control,
        upstream(answering("treatment")) as treatment,
    ):
        ab = route("rank", production.url, mode="ab")
        ab["ab"] = {
            "arms": [
                {"name": "control", "url": control.url, "weight": 50},
                {"name": "treatment", "url": treatment.url, "weight": 50},
            ],
            "assignment_key": "header:X-User-Id",
        }
        config = write_config(tmp_path, [ab])
        async with running_proxy(config) as proxy:
            seen: dict[str, str] = {}
            for user in range(200):
                for _ in range(2):
                    async with client.post(
                        f"{proxy.url}/v1/models/rank:predict",
                        json={"instances": [1]},
                        headers={"X-User-Id": f"user-{user}"},
                    ) as response:
                        assert response.status == 200
                        arm = response.headers["X-Experiment-Arm"]
                        body = await response.json()
                    # The arm named in the header is the one that answered, every time.
                    assert body["predictions"] == [arm]
                    assert seen.setdefault(f"user-{user}", arm) == arm
            async with client.get(f"{proxy.admin_url}/experiments") as response:
                document = await response.json()
            exposures = list(proxy.sink.exposures)
            counted = {
                arm: proxy.metric("shadowproxy_experiment_requests_total", route="rank", arm=arm)
                for arm in ("control", "treatment")
            }
    split = Counter(seen.values())
    assert set(split) == {"control", "treatment"}
    assert 60 <= split["control"] <= 140  # 200 users at 50/50
    assert len(exposures) == 400
    assert Counter(e.arm for e in exposures) == Counter(
        {arm: 2 * count for arm, count in split.items()}
    )
    assert counted == {arm: float(2 * count) for arm, count in split.items()}
    units = {e.unit for e in exposures}
    assert len(units) == 200 and not any(u is not None and "user" in u for u in units)
    assert all(e.route == "rank" and e.status == 200 and e.error is None for e in exposures)
    assert {e.share for e in exposures} == {0.5}
    (experiment,) = document["experiments"]
    assert experiment["mode"] == "ab" and [a["name"] for a in experiment["arms"]] == [
        "control",
        "treatment",
    ]


def canary_route(production: str, candidate: str) -> dict[str, object]:
    config = route("price", production, mode="canary")
    config["canary"] = {
        "candidate": {"name": "v2", "url": candidate},
        "assignment_key": "header:X-User-Id",
        "steps": [20, 50, 100],
        "step_min_requests": 60,
        "step_min_duration_s": 0,
        "guardrail_min_samples": 30,
        "guardrails": [{"metric": "error_rate", "max_increase": 0.02}],
    }
    return config


async def drive(proxy: RunningProxy, client: aiohttp.ClientSession, users: range) -> Counter[str]:
    answered: Counter[str] = Counter()
    for user in users:
        async with client.post(
            f"{proxy.url}/v1/models/price:predict",
            json={"instances": [1]},
            headers={"X-User-Id": f"u{user}"},
        ) as response:
            answered[response.headers["X-Canary-Arm"]] += 1
            await response.read()
    return answered


async def experiment(proxy: RunningProxy, client: aiohttp.ClientSession) -> dict[str, object]:
    async with client.get(f"{proxy.admin_url}/experiments") as response:
        document = await response.json()
    (only,) = document["experiments"]
    assert isinstance(only, dict)
    return only


async def test_a_failing_canary_is_rolled_back_with_its_evidence_and_stays_down(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    state_dir = tmp_path / "state"
    async with (
        upstream(answering("production")) as production,
        upstream(answering("v2", error_every=4)) as candidate,  # 25% errors
    ):
        config = write_config(
            tmp_path, [canary_route(production.url, candidate.url)], state_dir=str(state_dir)
        )
        async with running_proxy(config) as proxy:
            status = "running"
            for batch in range(40):
                await drive(proxy, client, range(batch * 100, batch * 100 + 100))
                await asyncio.sleep(EVALUATE_EVERY_S * 2)
                status = str((await experiment(proxy, client))["status"])
                if status == "rolled_back":
                    break
            assert status == "rolled_back"
            after = await drive(proxy, client, range(10_000, 10_200))
            state = await experiment(proxy, client)
            percent = proxy.metric("shadowproxy_canary_percent", route="price")
            rollbacks = proxy.metric(
                "shadowproxy_canary_decisions_total", route="price", action="rollback"
            )
    assert after == Counter({"production": 200})  # 0% after a rollback
    assert state["percent"] == 0 and percent == 0 and rollbacks == 1
    decisions = state["decisions"]
    assert isinstance(decisions, list)
    rollback = decisions[-1]
    assert rollback["action"] == "rollback" and rollback["by"] == "auto"
    assert "error_rate" in json.dumps(rollback["evidence"])
    saved = json.loads((state_dir / "canary-price.json").read_text())
    assert saved["status"] == "rolled_back"

    # A restart resumes from the state file: still rolled back, until an operator resets.
    async with (
        upstream(answering("production")) as production,
        upstream(answering("v2")) as candidate,
    ):
        config = write_config(
            tmp_path, [canary_route(production.url, candidate.url)], state_dir=str(state_dir)
        )
        async with running_proxy(config) as proxy:
            assert (await experiment(proxy, client))["status"] == "rolled_back"
            async with client.post(f"{proxy.admin_url}/experiments/price/resume") as response:
                assert response.status == 409  # only reset leaves rolled_back
            async with client.post(
                f"{proxy.admin_url}/experiments/price/reset", headers={"X-Operator": "alice"}
            ) as response:
                assert response.status == 200
                body = await response.json()
            assert body["decision"]["by"] == "alice"
            assert body["experiment"]["status"] == "running"
            assert body["experiment"]["percent"] == 20
            async with client.post(f"{proxy.admin_url}/experiments/price/launch") as response:
                assert response.status == 404


async def test_a_good_canary_advances_through_every_step(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with (
        upstream(answering("production")) as production,
        upstream(answering("v2")) as candidate,
    ):
        config = write_config(
            tmp_path,
            [canary_route(production.url, candidate.url)],
            state_dir=str(tmp_path / "state"),
        )
        async with running_proxy(config) as proxy:
            percents = []
            for batch in range(60):
                await drive(proxy, client, range(batch * 100, batch * 100 + 100))
                await asyncio.sleep(EVALUATE_EVERY_S * 2)
                state = await experiment(proxy, client)
                percents.append(state["percent"])
                if state["status"] == "completed":
                    break
            assert state["status"] == "completed", state
            assert state["percent"] == 100
            answered = await drive(proxy, client, range(20_000, 20_100))
    steps = [p for i, p in enumerate(percents) if i == 0 or p != percents[i - 1]]
    assert steps == [20, 50, 100]
    assert answered == Counter({"v2": 100})
