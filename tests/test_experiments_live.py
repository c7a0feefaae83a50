"""Canary and A/B routes on the real proxy: who answers, what is recorded, what is decided."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.app import Server
from shadowproxy.compare import Comparer
from shadowproxy.config import load_config
from shadowproxy.metrics import Metrics
from shadowproxy.proxy import arms
from shadowproxy.recording import Recorder, read_dataset
from shadowproxy.recording.process import RecorderProcess
from tests.support import RunningProxy, route, running_proxy, upstream, write_config

EVALUATE_EVERY_S = 0.1


@pytest.fixture(autouse=True)
def evaluate_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller looks every second in production; a test need not wait that long."""
    monkeypatch.setattr(arms, "EVALUATE_EVERY_S", EVALUATE_EVERY_S)


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


@dataclass
class RecordingProxy:
    """The proxy with the recorder ``serve`` uses, so pairs are compared and the
    verdicts reach the canary controller."""

    server: Server
    recorder: Recorder | RecorderProcess

    @property
    def url(self) -> str:
        assert self.server.proxy_address is not None
        return "http://{}:{}".format(*self.server.proxy_address)

    @property
    def admin_url(self) -> str:
        assert self.server.admin_address is not None
        return "http://{}:{}".format(*self.server.admin_address)


@contextlib.asynccontextmanager
async def recording_proxy(
    path: Path, writer: Literal["thread", "process"]
) -> AsyncIterator[RecordingProxy]:
    config = load_config(path)
    recorder: Recorder | RecorderProcess
    if writer == "process":
        metrics = Metrics(CollectorRegistry(), recorder_registry=CollectorRegistry())
        recorder = RecorderProcess(config, metrics)
    else:
        metrics = Metrics(CollectorRegistry())
        comparer = Comparer(config.routes)
        recorder = Recorder(config.main.recording, config.routes, metrics, comparer)
    server = Server(config, metrics, recorder, recorder)
    await server.start()
    try:
        yield RecordingProxy(server, recorder)
    finally:
        await server.stop()


Proxy = RunningProxy | RecordingProxy


async def drive(proxy: Proxy, client: aiohttp.ClientSession, users: range) -> Counter[str]:
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


async def experiment(proxy: Proxy, client: aiohttp.ClientSession) -> dict[str, Any]:
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


# --- the disagreement guardrail: copies to production, compared by the writer -----------


def checked_canary(
    production: str, candidate: str, sample_rate: float = 1.0, **canary: Any
) -> dict[str, Any]:
    config = canary_route(production, candidate)
    config["compare"] = {"prediction": "kserve-v1"}
    guardrail = {"metric": "disagreement", "max": 0.05, "sample_rate": sample_rate}
    config["canary"] = {**config["canary"], "guardrails": [guardrail], **canary}  # type: ignore[dict-item]
    return config


async def test_a_candidate_that_answers_differently_is_rolled_back_on_disagreement(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with (
        upstream(answering("production")) as production,
        upstream(answering("v2")) as candidate,
    ):
        config = write_config(
            tmp_path,
            [checked_canary(production.url, candidate.url)],
            state_dir=str(tmp_path / "state"),
            recording={"dir": str(tmp_path / "logs"), "flush_interval_s": 0.2},
        )
        async with recording_proxy(config, "process") as proxy:
            for batch in range(40):
                await drive(proxy, client, range(batch * 100, batch * 100 + 100))
                await asyncio.sleep(EVALUATE_EVERY_S * 2)
                state = await experiment(proxy, client)
                if state["status"] == "rolled_back":
                    break
            assert state["status"] == "rolled_back", state
            after = await drive(proxy, client, range(10_000, 10_100))
    assert after == Counter({"production": 100})
    rollback = state["decisions"][-1]
    assert (rollback["action"], rollback["by"]) == ("rollback", "auto")
    (evidence,) = rollback["evidence"]["guardrails"]
    assert evidence["metric"] == "disagreement" and evidence["verdict"] == "fail"
    assert evidence["compared"] >= 30 and evidence["disagreed"] == evidence["compared"]
    assert any("disagreement" in reason for reason in rollback["reasons"])
    # The check's rows: the candidate's answer on the production side, production's copy
    # on the shadow side, judged with the route's compare block.
    rows = [
        r for r in read_dataset(str(tmp_path / "logs")).to_pylist() if r["shadow"] == "production"
    ]
    assert len(rows) >= evidence["compared"]
    assert {
        (r["role"], r["prod_prediction"], r["shadow_prediction"], r["agree"]) for r in rows
    } == {("candidate", '["v2"]', '["production"]', False)}


async def test_a_candidate_that_answers_like_production_advances_with_the_guardrail(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with (
        upstream(answering("production")) as production,
        upstream(answering("production")) as candidate,
    ):
        config = write_config(
            tmp_path,
            [checked_canary(production.url, candidate.url, step_min_requests=100)],
            state_dir=str(tmp_path / "state"),
        )
        async with recording_proxy(config, "thread") as proxy:
            percents = []
            for batch in range(60):
                await drive(proxy, client, range(batch * 100, batch * 100 + 100))
                await asyncio.sleep(EVALUATE_EVERY_S * 2)
                state = await experiment(proxy, client)
                percents.append(state["percent"])
                if state["status"] == "completed":
                    break
            assert state["status"] == "completed", state
    steps = [p for i, p in enumerate(percents) if i == 0 or p != percents[i - 1]]
    assert steps == [20, 50, 100]
    advances = [d for d in state["decisions"] if d["action"] in ("advance", "complete")]
    assert len(advances) == 2
    for decision in advances:
        (evidence,) = decision["evidence"]["guardrails"]
        assert evidence["metric"] == "disagreement" and evidence["verdict"] == "pass"
        assert evidence["compared"] >= 30 and evidence["disagreed"] == 0


async def test_production_gets_check_copies_of_candidate_answers_only_at_the_sample_rate(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with (
        upstream(answering("production")) as production,
        upstream(answering("v2")) as candidate,
        upstream(answering("mirror")) as mirror,
    ):
        canary = checked_canary(
            production.url, candidate.url, sample_rate=0.5, steps=[50], step_min_requests=10_000
        )
        canary["shadows"] = [{"name": "mirror", "url": mirror.url}]
        config = write_config(tmp_path, [canary], state_dir=str(tmp_path / "state"))
        served: dict[str, str] = {}
        async with running_proxy(config) as proxy:
            for user in range(400):
                async with client.post(
                    f"{proxy.url}/v1/models/price:predict",
                    json={"instances": [1]},
                    headers={"X-User-Id": f"u{user}"},
                ) as response:
                    served[response.headers["X-Request-Id"]] = response.headers["X-Canary-Arm"]
                    await response.read()
        # Stopping drained every copy: all of them have arrived and are paired.
        pairs = list(proxy.sink.pairs)

    def request_ids(seen: list[Any], shadow: bool) -> list[str]:
        headers = [{name.lower(): value for name, value in s.headers} for s in seen]
        return [h["x-request-id"] for h in headers if ("x-shadow-request" in h) == shadow]

    by_candidate = [rid for rid, arm in served.items() if arm == "v2"]
    checks = request_ids(production.seen, shadow=True)
    assert 120 <= len(by_candidate) <= 280  # 400 users at 50%
    # Production answered its own share, and got copies of candidate answers only.
    assert sorted(request_ids(production.seen, shadow=False)) == sorted(
        rid for rid, arm in served.items() if arm == "production"
    )
    assert set(checks) <= set(by_candidate) and len(set(checks)) == len(checks)
    assert 0.35 * len(by_candidate) <= len(checks) <= 0.65 * len(by_candidate)
    # The route's own shadow still gets a copy of every request, whoever answered.
    assert len(mirror.seen) == 400 and len(request_ids(mirror.seen, shadow=True)) == 400
    # Each check is one pair: the candidate's answer against production's copy.
    check_pairs = [p for p in pairs if p.shadow == "production"]
    assert sorted(p.request.request_id for p in check_pairs) == sorted(checks)
    for pair in check_pairs:
        assert json.loads(pair.production.body) == {"predictions": ["v2"]}
        assert json.loads(pair.result.body) == {"predictions": ["production"]}
        assert pair.role == "candidate" and pair.result.outcome == "ok"
    assert len([p for p in pairs if p.shadow == "mirror"]) == 400
