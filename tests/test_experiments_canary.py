"""The canary state machine, driven by simulated traffic: a worse candidate is rolled
back with its evidence, a good one goes through every step, a marginal one is not
punished, noise decides nothing; operator actions; the saved state round-trips."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from shadowproxy.experiments.canary import (
    MAX_DECISIONS,
    Canary,
    CanaryActionError,
    Decision,
    advance_level,
)
from shadowproxy.experiments.spec import CanarySpec
from shadowproxy.experiments.window import Window

T0 = 1_700_000_000.0
ERROR_RATE = {"metric": "error_rate", "max_increase": 0.01}
LATENCY = {"metric": "p99_latency_ms", "max_increase_ratio": 1.2}
DISAGREEMENT = {"metric": "disagreement", "max": 0.05}


def spec(**change: Any) -> CanarySpec:
    base: dict[str, Any] = {
        "candidate": {"name": "v2", "url": "http://127.0.0.1:8002"},
        "steps": [1, 5, 25, 50, 100],
        "step_min_requests": 500,
        "step_min_duration_s": 300,
        "guardrails": [ERROR_RATE],
    }
    return CanarySpec.model_validate({**base, **change})


class Traffic:
    """Requests split by the canary's percentage, with given error and disagreement rates."""

    def __init__(
        self, cand_errors: float, prod_errors: float, seed: int, disagree: float = 0.0
    ) -> None:
        self.rng = random.Random(seed)
        self.cand_errors, self.prod_errors, self.disagree = cand_errors, prod_errors, disagree

    def serve(self, window: Window, candidate_requests: int, percent: float) -> None:
        """``candidate_requests`` to the candidate and the matching share to production."""
        production = round(candidate_requests * (100 - percent) / percent)
        for _ in range(candidate_requests):
            window.record("candidate", error=self.rng.random() < self.cand_errors)
            window.record_comparison(agree=self.rng.random() >= self.disagree)
        for _ in range(production):
            window.record("production", error=self.rng.random() < self.prod_errors)


def run(
    canary: Canary, traffic: Traffic, *, ticks: int, per_tick: int = 100, tick_s: float = 60.0
) -> list[Decision]:
    """Evaluate once per tick, starting a new window whenever the canary changes step."""
    now, window, changes = T0, canary.new_window(), []
    for _ in range(ticks):
        if canary.status in ("rolled_back", "promoted", "completed"):
            break
        now += tick_s
        traffic.serve(window, per_tick, canary.current_percent)
        decision = canary.evaluate(now, window)
        if decision.action != "hold":
            changes.append(decision)
        if canary.epoch != window.epoch:
            window = canary.new_window()
    return changes


def test_a_worse_candidate_is_rolled_back_with_its_evidence() -> None:
    canary = Canary(spec(), now=T0)
    changes = run(canary, Traffic(cand_errors=0.05, prod_errors=0.01, seed=1), ticks=10)
    assert [d.action for d in changes] == ["rollback"]
    rollback = changes[0]
    assert (canary.status, canary.current_percent) == ("rolled_back", 0.0)
    assert (rollback.by, rollback.from_percent, rollback.percent) == ("auto", 1.0, 0.0)
    assert (
        rollback.reasons[0].startswith("error_rate: candidate ")
        and "exceeds max_increase 1.00%" in rollback.reasons[0]
    )
    figures = rollback.evidence["guardrails"][0]
    assert figures["verdict"] == "fail" and figures["lower"] > 0.01
    assert rollback.evidence["candidate_requests"] < 500  # at once: before the step's minimum
    assert canary.decisions == (rollback,)
    # Rolled back stays rolled back: evaluation does nothing until an operator resets.
    assert run(canary, Traffic(0.0, 0.01, seed=2), ticks=5) == [] and canary.current_percent == 0.0


def test_a_good_candidate_goes_through_every_step() -> None:
    canary = Canary(spec(guardrails=[ERROR_RATE, DISAGREEMENT]), now=T0)
    changes = run(
        canary, Traffic(cand_errors=0.01, prod_errors=0.01, seed=3, disagree=0.01), ticks=200
    )
    assert [(d.action, d.percent) for d in changes] == [
        ("advance", 5.0),
        ("advance", 25.0),
        ("advance", 50.0),
        ("advance", 100.0),
    ]
    assert (canary.status, canary.current_percent) == ("completed", 100.0)
    assert changes[-1].reasons[-1].startswith("100% reached")
    for decision in changes:
        assert decision.evidence["candidate_requests"] >= 500
        assert decision.evidence["elapsed_s"] >= 300
        assert [g["verdict"] for g in decision.evidence["guardrails"]] == ["pass", "pass"]


def test_a_candidate_slightly_worse_within_the_margin_is_not_rolled_back() -> None:
    canary = Canary(spec(), now=T0)
    # +0.4% errors against a tolerated +1%: never a failure shown; enough data shows a pass.
    changes = run(canary, Traffic(cand_errors=0.014, prod_errors=0.01, seed=4), ticks=300)
    assert "rollback" not in [d.action for d in changes]
    assert canary.status == "completed"


def test_the_same_candidate_beyond_the_margin_is_rolled_back() -> None:
    canary = Canary(spec(guardrails=[{"metric": "error_rate", "max_increase": 0.002}]), now=T0)
    changes = run(canary, Traffic(cand_errors=0.03, prod_errors=0.01, seed=4), ticks=300)
    assert [d.action for d in changes][-1] == "rollback"


def full_window(canary: Canary, cand: tuple[int, int], prod: tuple[int, int]) -> Window:
    window = canary.new_window()
    window.candidate.requests, window.candidate.errors = cand
    window.production.requests, window.production.errors = prod
    return window


def test_few_requests_decide_nothing() -> None:
    canary = Canary(spec(), now=T0)
    decision = canary.evaluate(T0 + 600, full_window(canary, (20, 3), (2000, 20)))
    assert decision.action == "hold" and canary.status == "running"
    assert (
        "error_rate: too few observations to decide (candidate 20, production 2000; needs 30 each)"
        in decision.reasons
    )
    assert "the candidate has answered 20 of the 500 requests a step needs" in decision.reasons
    assert canary.decisions == () and canary.last_evaluation == decision


def test_a_step_waits_for_its_minimum_duration() -> None:
    canary = Canary(spec(), now=T0)
    decision = canary.evaluate(T0 + 120, full_window(canary, (5000, 50), (500_000, 5000)))
    assert decision.action == "hold"
    assert decision.reasons == ("the step has run 120 s of 300 s",)
    assert (
        canary.evaluate(T0 + 300, full_window(canary, (5000, 50), (500_000, 5000))).action
        == "advance"
    )


def test_advance_looks_spend_the_error_in_halves() -> None:
    assert [round(advance_level(0.95, k), 6) for k in range(4)] == [
        0.975,
        0.9875,
        0.99375,
        0.996875,
    ]
    assert sum(1 - advance_level(0.95, k) for k in range(60)) < 0.05


def test_advance_is_decided_at_looks_only() -> None:
    canary = Canary(spec(), now=T0)
    # 500 requests, 1% vs 1%: look 0 (97.5% bounds) cannot show the increase is under 1%.
    first = canary.evaluate(T0 + 300, full_window(canary, (500, 5), (50_000, 500)))
    assert first.action == "hold" and first.evidence["look"] == {"index": 0, "level": 0.975}
    assert first.reasons[0] == "advance look 0 at 97.5%: not every guardrail passes"
    # Between looks nothing is decided, however good the data looks.
    between = canary.evaluate(T0 + 400, full_window(canary, (999, 0), (99_900, 999)))
    assert between.action == "hold" and "look" not in between.evidence
    assert between.reasons == (
        "advance looks are at 500, 1000, 2000, ... candidate requests; the next is at 1000",
    )
    # Jumping to 2000 requests takes look 2 (1000 is never looked at).
    later = canary.evaluate(T0 + 500, full_window(canary, (2000, 20), (200_000, 2000)))
    assert later.action == "advance" and later.evidence["look"] == {"index": 2, "level": 0.99375}
    assert canary.to_dict()["looks"] == 0  # a new step starts with every look available


def test_without_guardrails_volume_and_time_decide() -> None:
    canary = Canary(spec(guardrails=[]), now=T0)
    decision = canary.evaluate(T0 + 300, full_window(canary, (500, 400), (0, 0)))
    assert (decision.action, decision.reasons) == ("advance", ("no guardrails configured",))


def test_latency_guardrail() -> None:
    def latencies(canary: Canary, cand_n: int, scale: float) -> Window:
        rng = random.Random(9)
        window = canary.new_window()
        for _ in range(cand_n):
            window.record("candidate", error=False, latency_ms=scale * rng.lognormvariate(3, 0.5))
        for _ in range(20_000):
            window.record("production", error=False, latency_ms=rng.lognormvariate(3, 0.5))
        return window

    slow = Canary(spec(guardrails=[LATENCY]), now=T0)
    decision = slow.evaluate(T0 + 60, latencies(slow, 600, 1.6))
    assert decision.action == "rollback" and decision.evidence["guardrails"][0]["ratio_lower"] > 1.2
    assert decision.reasons[0].startswith("p99_latency_ms: candidate ")

    same = Canary(spec(guardrails=[LATENCY]), now=T0)
    assert (
        same.evaluate(T0 + 600, latencies(same, 1000, 1.0)).action == "hold"
    )  # p99 of 1000: too loose
    assert same.evaluate(T0 + 600, latencies(same, 6000, 1.0)).action == "advance"


def test_disagreement_guardrail_rolls_back() -> None:
    canary = Canary(spec(guardrails=[DISAGREEMENT]), now=T0)
    changes = run(canary, Traffic(0.01, 0.01, seed=5, disagree=0.15), ticks=10)
    assert [d.action for d in changes] == ["rollback"]
    assert changes[0].evidence["guardrails"][0]["metric"] == "disagreement"


def test_on_fail_pause_keeps_the_share_and_stops() -> None:
    canary = Canary(spec(on_fail="pause"), now=T0)
    bad = full_window(canary, (1000, 50), (99_000, 990))
    first = canary.evaluate(T0 + 60, bad)
    assert (first.action, first.by, canary.status, canary.current_percent) == (
        "pause",
        "auto",
        "paused",
        1.0,
    )
    again = canary.evaluate(T0 + 120, bad)
    assert again.action == "hold" and again.reasons[0] == "paused, and still failing"
    assert canary.decisions == (first,)


def test_paused_does_not_advance_but_still_rolls_back() -> None:
    canary = Canary(spec(), now=T0)
    canary.pause(now=T0 + 1, by="alice")
    good = full_window(canary, (5000, 50), (500_000, 5000))
    held = canary.evaluate(T0 + 600, good)
    assert held.action == "hold" and held.reasons[0] == "paused: not advancing"
    bad = full_window(canary, (1000, 50), (99_000, 990))
    assert canary.evaluate(T0 + 700, bad).action == "rollback" and canary.status == "rolled_back"


def test_operator_actions_are_recorded_with_who_and_when() -> None:
    canary = Canary(spec(), now=T0)
    assert canary.pause(now=T0 + 10, by="alice", note="looking at a dashboard").reasons == (
        "looking at a dashboard",
    )
    resumed = canary.resume(now=T0 + 20, by="bob")
    assert (resumed.action, resumed.by, resumed.at, resumed.reasons) == (
        "resume",
        "bob",
        T0 + 20,
        ("resume requested by bob",),
    )
    promoted = canary.promote(now=T0 + 30, by="alice")
    assert (canary.status, canary.current_percent, promoted.from_percent) == (
        "promoted",
        100.0,
        1.0,
    )
    assert promoted.evidence == {"previous": {"status": "running", "step": 0, "percent": 1.0}}
    canary.rollback(now=T0 + 40, by="carol")
    assert (canary.status, canary.current_percent) == ("rolled_back", 0.0)
    reset = canary.reset(now=T0 + 50, by="carol")
    assert (canary.status, canary.step, canary.current_percent, canary.step_started_at) == (
        "running",
        0,
        1.0,
        T0 + 50,
    )
    assert reset.describe() == "canary reset by carol (0% -> 1%, running): reset requested by carol"
    assert [d.action for d in canary.decisions] == [
        "pause",
        "resume",
        "promote",
        "rollback",
        "reset",
    ]


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ([], "resume", "cannot resume a canary that is running (only when paused)"),
        ([], "reset", "cannot reset a canary that is running (only when rolled_back)"),
        (["pause"], "pause", "cannot pause a canary that is paused (only when running)"),
        (
            ["rollback"],
            "promote",
            "cannot promote a canary that is rolled_back (only when running or paused or completed)",
        ),
        (["promote"], "promote", "cannot promote a canary that is promoted"),
        (
            [],
            "restart",
            "unknown action 'restart'; one of: pause, resume, promote, rollback, reset",
        ),
    ],
)
def test_refused_operator_actions_change_nothing(
    setup: list[str], action: str, message: str
) -> None:
    canary = Canary(spec(), now=T0)
    for step in setup:
        canary.act(step, now=T0, by="ops")
    before = canary.to_dict()
    with pytest.raises(CanaryActionError) as caught:
        canary.act(action, now=T0 + 1, by="ops")
    assert str(caught.value).startswith(message)
    assert canary.to_dict() == before


def test_a_share_change_starts_a_new_epoch_and_refuses_a_stale_window() -> None:
    canary = Canary(spec(), now=T0)
    stale = canary.new_window()
    canary.pause(now=T0, by="ops")
    canary.resume(now=T0, by="ops")
    assert canary.epoch == 0  # same share: the evidence still holds
    canary.promote(now=T0, by="ops")
    assert canary.epoch == 1
    canary.rollback(now=T0, by="ops")
    canary.reset(now=T0, by="ops")
    assert canary.epoch == 3
    decision = canary.evaluate(T0 + 600, stale)
    assert decision.action == "hold" and "start a new window" in decision.reasons[0]


def test_completion_below_100_percent() -> None:
    canary = Canary(spec(steps=[10, 50], guardrails=[]), now=T0)
    window = full_window(canary, (500, 0), (0, 0))
    assert canary.evaluate(T0 + 300, window).action == "advance"
    done = canary.evaluate(T0 + 600, full_window(canary, (500, 0), (0, 0)))
    assert (done.action, canary.status, canary.current_percent) == ("complete", "completed", 50.0)
    # Completed at 50%: production still answers half, so guardrails keep watching.
    watched = Canary(spec(steps=[50]), now=T0)
    watched.evaluate(T0 + 300, full_window(watched, (5000, 50), (5000, 50)))
    assert watched.status == "completed"
    assert (
        watched.evaluate(T0 + 400, full_window(watched, (1000, 80), (1000, 10))).action
        == "rollback"
    )


def test_state_round_trips_through_json() -> None:
    canary = Canary(spec(guardrails=[ERROR_RATE, LATENCY, DISAGREEMENT]), now=T0)
    run(canary, Traffic(0.01, 0.01, seed=6), ticks=12)
    canary.pause(now=T0 + 2000, by="alice")
    canary.evaluate(T0 + 2001, canary.new_window())
    data = json.loads(json.dumps(canary.to_dict(), allow_nan=False))
    assert data["schema"] == 1 and data["status"] == "paused" and data["candidate"] == "v2"
    assert data["looks"] > 0  # advance looks spent survive a restart too
    restored = Canary.from_dict(canary.spec, data, now=T0 + 9999)
    assert restored.to_dict() == canary.to_dict()
    assert (restored.step_started_at, restored.current_percent) == (
        canary.step_started_at,
        canary.current_percent,
    )
    restored.resume(now=T0 + 10_000, by="alice")
    assert restored.status == "running"


def test_restore_with_a_new_candidate_starts_over() -> None:
    canary = Canary(spec(), now=T0)
    canary.rollback(now=T0 + 5, by="ops")
    changed = spec(candidate={"name": "v3", "url": "http://127.0.0.1:8003"})
    restored = Canary.from_dict(changed, canary.to_dict(), now=T0 + 10)
    assert (restored.status, restored.step, restored.current_percent) == ("running", 0, 1.0)
    last = restored.decisions[-1]
    assert (last.action, last.by, last.reasons) == (
        "reset",
        "config",
        ("candidate changed from 'v2' to 'v3': starting over",),
    )
    assert [d.action for d in restored.decisions] == ["rollback", "reset"]
    assert restored.epoch > canary.epoch


def test_restore_with_fewer_steps_stays_on_an_existing_step() -> None:
    canary = Canary(spec(guardrails=[]), now=T0)
    for tick in range(3):
        canary.evaluate(T0 + 300 * (tick + 1), full_window(canary, (500, 0), (500, 0)))
    assert canary.current_percent == 50.0
    restored = Canary.from_dict(spec(steps=[1, 10]), canary.to_dict(), now=T0)
    assert (restored.step, restored.current_percent) == (1, 10.0)
    assert restored.epoch == canary.epoch + 1  # another share: the saved evidence is void


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"schema": 2}, "canary state: schema 2 is not 1"),
        ({}, "canary state: schema None is not 1"),
        ([], "canary state: schema 'list' is not 1"),
        ({"schema": 1, "candidate": "v2"}, "canary state is unreadable: KeyError"),
        (
            {
                "schema": 1,
                "candidate": "v2",
                "status": "flying",
                "step": 0,
                "percent": 1,
                "epoch": 0,
                "step_started_at": 0,
                "decisions": [],
            },
            "canary state is unreadable: ValueError(\"unknown status 'flying'\")",
        ),
    ],
)
def test_unreadable_state_is_refused(data: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Canary.from_dict(spec(), data, now=T0)
    assert str(caught.value).startswith(message)


def test_the_decision_history_is_bounded() -> None:
    canary = Canary(spec(), now=T0)
    for i in range(MAX_DECISIONS):
        canary.rollback(now=T0 + i, by="ops")
        canary.reset(now=T0 + i, by="ops")
    assert len(canary.decisions) == MAX_DECISIONS
    assert canary.decisions[-1].action == "reset"
