"""``shadowproxy demo --scenario canary-bad|canary-good``: the proxy runs a canary by itself.

Production is v1; the candidate v2 answers a growing share of users (``STEPS``, sticky
by ``X-User-Id``) while the proxy compares its error rate with production's once a
second. In ``canary-bad`` v2's server answers 20% of requests with a 500
(``model_server --error-rate``): the error-rate guardrail fails and the proxy rolls the
canary back. In ``canary-good`` v2 is healthy and the canary advances through every step
to ``completed``. This module only sends traffic and reads ``GET /experiments``; every
decision is the proxy's, logged by it and kept in its state file.

The step sizes keep the demo short: from about 190 error-free candidate answers on, the
first advance look (97.5% one-sided) shows an increase of at most 2 points, so
``STEP_MIN_REQUESTS`` of 200 lets a healthy step pass at its first look. A real canary
needs more (see docs/experiments.md, Canary).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from shadowproxy.demo.models import DemoData, train
from shadowproxy.demo.stack import (
    PREDICT_PATH,
    Stack,
    prepare,
    processes,
    run_report,
    start_model,
    start_proxy,
    steady,
    stop_proxy,
    wait_for_stack,
    write_config,
)
from shadowproxy.loop import run_loop

RATE = 500.0
STEPS = [5, 25, 50, 100]
STEP_MIN_REQUESTS = 200
ERROR_RATE = 0.2
MAX_INCREASE = 0.02
USERS = 1000
DEADLINE_S = 45.0
"""Traffic stops here whatever the canary's state (the scenario then fails)."""
AFTERWARDS = 200
"""Requests sent once the canary has ended, to show who answers now."""
POLL_S = 0.2
PROGRESS_EVERY_S = 2.0
ENDED = ("rolled_back", "completed", "promoted", "paused")


def canary_route(stack: Stack) -> dict[str, Any]:
    return {
        "name": "digits",
        "match": {"path_prefix": "/v1/models/digits", "methods": ["POST"]},
        "mode": "canary",
        "production": {"url": stack.models["v1"], "timeout_s": 10},
        "canary": {
            "candidate": {"name": "v2", "url": stack.models["v2"], "timeout_s": 10},
            "assignment_key": "header:X-User-Id",
            "steps": STEPS,
            "step_min_requests": STEP_MIN_REQUESTS,
            "step_min_duration_s": 2,
            "confidence": 0.95,
            "guardrail_min_samples": 30,
            "guardrails": [{"metric": "error_rate", "max_increase": MAX_INCREASE}],
            "on_fail": "rollback",
        },
    }


@dataclass
class Watch:
    """What the scenario has seen of the canary on ``GET /experiments``."""

    began: float = field(default_factory=time.monotonic)
    state: dict[str, Any] = field(default_factory=dict)
    printed: int = 0
    answered: Counter[str] = field(default_factory=Counter)

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.began:5.1f}s]"


def run(out: Path, *, bad: bool, rate: float = RATE, seed: int = 1) -> int:
    out = prepare(out)
    began = time.monotonic()
    print("training production v1 (logistic regression) and candidate v2 (gradient boosting)...")
    paths, data = train(out)
    stack = Stack.on_free_ports(("v1", "v2"))
    config = write_config(out, stack, canary_route(stack), state_dir=str(out / "state"))
    broken = ("--error-rate", str(ERROR_RATE), "--seed", str(seed)) if bad else ()
    what = f"fails {ERROR_RATE:.0%} of requests (HTTP 500)" if bad else "is healthy"
    print(
        f"config: {config} and {out / 'routes' / 'digits.yaml'}\n"
        f"canary: v2 {what}; steps {STEPS}%, {STEP_MIN_REQUESTS} candidate answers and 2 s "
        f"per step, guardrail error_rate max_increase {MAX_INCREASE:.0%}; traffic {rate:g}/s "
        f"from {USERS} rotating users"
    )
    with processes() as children:
        start_model(children, stack.models["v1"], paths["v1"], "v1")
        start_model(children, stack.models["v2"], paths["v2"], "v2", *broken)
        proxy = start_proxy(children, config)
        watch = run_loop(drive(stack, data, rate))
        stopped = stop_proxy(proxy)
    ok = conclude(watch, bad=bad) and stopped
    # The report reads the decisions back from the state file (found through --config).
    ok = run_report(out, "--config", str(config)) == 0 and ok
    print(f"report: {out / 'report.html'}\nscenario took {time.monotonic() - began:.0f}s")
    return 0 if ok else 1


async def drive(stack: Stack, data: DemoData, rate: float) -> Watch:
    watch = Watch()
    url = f"{stack.proxy}{PREDICT_PATH}"
    async with aiohttp.ClientSession() as session:
        await wait_for_stack(session, stack)
        watch.began = time.monotonic()
        ended = asyncio.Event()

        async def send(index: int) -> None:
            arm = await predict(session, url, data, index)
            watch.answered[arm] += 1

        async with asyncio.TaskGroup() as group:
            group.create_task(observe(session, stack.admin, watch, ended))
            await steady(rate, send, stop=ended)
            ended.set()
        await report_afterwards(session, url, data, watch)
    return watch


async def predict(session: aiohttp.ClientSession, url: str, data: DemoData, index: int) -> str:
    """One request from user ``index % USERS``; returns who answered (``X-Canary-Arm``)."""
    body = orjson.dumps({"instances": [data.rows[index % len(data.rows)]]})
    headers = {"Content-Type": "application/json", "X-User-Id": f"user-{index % USERS:04d}"}
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return response.headers.get("X-Canary-Arm", "?")


async def observe(
    session: aiohttp.ClientSession, admin: str, watch: Watch, ended: asyncio.Event
) -> None:
    """Poll ``GET /experiments``; print each new decision; set ``ended`` when the canary
    has ended or the deadline has passed."""
    shown = 0.0
    while not ended.is_set():
        async with session.get(f"{admin}/experiments") as response:
            (watch.state,) = (await response.json())["experiments"]
        decisions = watch.state["decisions"]
        for decision in decisions[watch.printed :]:
            print_decision(watch.stamp(), decision)
        watch.printed = len(decisions)
        elapsed = time.monotonic() - watch.began
        if watch.state["status"] in ENDED or elapsed > DEADLINE_S:
            ended.set()
        elif elapsed - shown >= PROGRESS_EVERY_S:
            shown = elapsed
            print_progress(watch.stamp(), watch.state)
        await asyncio.sleep(POLL_S)


def print_progress(stamp: str, state: dict[str, Any]) -> None:
    window = state["window"]
    candidate, production = window["candidate"], window["production"]
    print(
        f"{stamp} at {state['percent']:g}%: candidate {candidate['requests']:,} answers "
        f"({candidate['errors']} errors), production {production['requests']:,} "
        f"({production['errors']} errors)",
        flush=True,
    )


def print_decision(stamp: str, decision: dict[str, Any]) -> None:
    move = f"{decision['from_percent']:g}% -> {decision['percent']:g}%"
    print(
        f"{stamp} {decision['action'].upper()} by {decision['by']} ({move}, {decision['status']})",
        flush=True,
    )
    for reason in decision["reasons"]:
        print(f"         {reason}")
    evidence = decision["evidence"]
    for guardrail in evidence.get("guardrails", []):
        if guardrail.get("metric") == "error_rate" and "candidate" in guardrail:
            print(f"         evidence: {error_rate_evidence(guardrail, evidence)}", flush=True)


def error_rate_evidence(guardrail: dict[str, Any], evidence: dict[str, Any]) -> str:
    candidate, production = guardrail["candidate"], guardrail["production"]
    return (
        f"candidate {candidate['errors']} errors in {candidate['requests']} answers, "
        f"production {production['errors']} in {production['requests']}; the increase is "
        f"{_pts(guardrail['lower'])} .. {_pts(guardrail['upper'])} at "
        f"{guardrail['confidence']:.4g} one-sided (limit {_pts(guardrail['limit'])}); "
        f"the step had run {evidence['elapsed_s']:.1f} s"
    )


def _pts(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:+.1f} pts"


async def report_afterwards(
    session: aiohttp.ClientSession, url: str, data: DemoData, watch: Watch
) -> None:
    """Who answers once the canary has ended: everyone the same side, every time."""
    watch.answered = Counter()
    for index in range(AFTERWARDS):
        watch.answered[await predict(session, url, data, index)] += 1


def conclude(watch: Watch, *, bad: bool) -> bool:
    state = watch.state
    decisions = state.get("decisions", [])
    visited = [STEPS[0], *(d["percent"] for d in decisions if d["action"] == "advance")]
    answered = ", ".join(f"{n} by {arm}" for arm, n in watch.answered.most_common())
    print(
        f"\nfinal state: {state.get('status')} at {state.get('percent', 0):g}% after "
        f"{len(decisions)} decision(s); steps run: {' -> '.join(f'{p:g}%' for p in visited)}\n"
        f"afterwards, {AFTERWARDS} requests were answered: {answered}\n"
        f"state file: {state.get('state_file')}"
    )
    if bad:
        ok = state.get("status") == "rolled_back" and set(watch.answered) == {"production"}
        verdict = "the failing candidate was rolled back automatically"
    else:
        ok = state.get("status") == "completed" and visited == STEPS
        ok = ok and set(watch.answered) == {"v2"}
        verdict = "the healthy candidate advanced through every step to completed"
    print(verdict if ok else f"UNEXPECTED: expected that {verdict}")
    return ok
