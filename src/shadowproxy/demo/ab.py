"""``shadowproxy demo --scenario ab|ab-skewed``: an A/B test with a known true effect.

Two arms answer for real, ``control`` (v1) and ``treatment`` (v2), 50/50 by a hash of
``X-User-Id``. ``USERS`` simulated users visit once each; whether a user then converts is
simulated with a known effect: probability ``CONVERSION["control"]`` after a control
answer, ``CONVERSION["treatment"]`` after a treatment one (the arm is read from the
``X-Experiment-Arm`` response header), decided by one seeded uniform draw per user and
posted to ``/feedback`` as ``outcome: true|false``. ``shadowproxy report`` must then
give an interval of the difference that contains the true effect, and a split that
matches the configuration.

``ab-skewed`` loses ``LOST`` of the treatment's users before they reach the proxy: the
scenario works out each user's arm with the proxy's own assignment function on the spec
parsed from the written config, and leaves that share of treatment's users out, as a
treatment page that crashes before it calls the model would. The configuration says
50/50, the proxy sees about 59/41, and the report's sample-ratio check must flag it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from shadowproxy.config import load_config
from shadowproxy.demo import post_feedback
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
from shadowproxy.experiments.assign import assign_arm
from shadowproxy.loop import run_loop

RATE = 500.0
USERS = 6000
CONVERSION = {"control": 0.10, "treatment": 0.13}
TRUE_EFFECT = CONVERSION["treatment"] - CONVERSION["control"]
LOST = 0.3
ARM_HEADER = "X-Experiment-Arm"


def ab_route(stack: Stack) -> dict[str, Any]:
    return {
        "name": "digits",
        "match": {"path_prefix": "/v1/models/digits", "methods": ["POST"]},
        "mode": "ab",
        # Answers only users outside the experiment's share; with no layer there are none.
        "production": {"url": stack.models["v1"], "timeout_s": 10},
        "ab": {
            "arms": [
                {"name": "control", "url": stack.models["v1"], "weight": 50},
                {"name": "treatment", "url": stack.models["v2"], "weight": 50},
            ],
            "assignment_key": "header:X-User-Id",
            "arm_header": ARM_HEADER,
        },
    }


def run(out: Path, *, skewed: bool, rate: float = RATE, seed: int = 1) -> int:
    out = prepare(out)
    began = time.monotonic()
    print("training control v1 (logistic regression) and treatment v2 (gradient boosting)...")
    paths, data = train(out)
    stack = Stack.on_free_ports(("v1", "v2"))
    config = write_config(out, stack, ab_route(stack))
    draws = random.Random(seed)
    converts = [draws.random() for _ in range(USERS)]
    users = visitors(config, [draws.random() for _ in range(USERS)] if skewed else None)
    print(
        f"config: {config} and {out / 'routes' / 'digits.yaml'}\n"
        f"A/B: control v1 and treatment v2, weights 50/50 by X-User-Id; {len(users):,} users "
        f"visit once at {rate:g}/s\nsimulated outcome: a user converts with p="
        f"{CONVERSION['control']:g} after a control answer, {CONVERSION['treatment']:g} after "
        f"a treatment one: the true effect is {TRUE_EFFECT * 100:+.1f} points (seed {seed})"
    )
    if skewed:
        print(
            f"skew: {LOST:.0%} of the users the hash puts in treatment never reach the proxy "
            f"(as if treatment's page crashed before calling the model): {USERS - len(users):,} "
            "users left out, so the observed split cannot match the configured 50/50"
        )
    with processes() as children:
        start_model(children, stack.models["v1"], paths["v1"], "v1")
        start_model(children, stack.models["v2"], paths["v2"], "v2")
        proxy = start_proxy(children, config)
        run_loop(drive(stack, data, rate, users, converts))
        if not stop_proxy(proxy):
            return 1
    if run_report(out) != 0:
        return 1
    ok = conclude(out / "summary.json", skewed=skewed, seed=seed)
    print(
        f"\nreport: {out / 'report.html'}\nsummary: {out / 'summary.json'}\n"
        f"scenario took {time.monotonic() - began:.0f}s"
    )
    return 0 if ok else 1


def visitors(config: Path, lose: list[float] | None) -> list[int]:
    """Every user, or (``lose`` given) all but ``LOST`` of those assigned to treatment."""
    if lose is None:
        return list(range(USERS))
    (route,) = load_config(config).routes
    assert route.ab is not None
    return [
        user
        for user in range(USERS)
        if assign_arm(route.ab, route.name, user_id(user)) != "treatment" or lose[user] >= LOST
    ]


def user_id(user: int) -> str:
    return f"user-{user:05d}"


async def drive(
    stack: Stack, data: DemoData, rate: float, users: list[int], converts: list[float]
) -> None:
    """Each user visits once; their outcome, decided by the arm that answered, is posted."""
    url = f"{stack.proxy}{PREDICT_PATH}"
    outcomes: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        await wait_for_stack(session, stack)

        async def visit(index: int) -> None:
            user = users[index]
            request_id = f"ab-{user:05d}"
            headers = {
                "Content-Type": "application/json",
                "X-User-Id": user_id(user),
                "X-Request-Id": request_id,
            }
            body = orjson.dumps({"instances": [data.rows[user % len(data.rows)]]})
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                arm = response.headers.get(ARM_HEADER, "?")
            if arm in CONVERSION:
                outcome = converts[user] < CONVERSION[arm]
                outcomes.append({"request_id": request_id, "outcome": outcome})

        await steady(rate, visit, count=len(users))
        await post_feedback(session, stack.admin, outcomes, "outcomes (converted or not)")


def conclude(summary: Path, *, skewed: bool, seed: int) -> bool:
    (experiment,) = orjson.loads(summary.read_bytes())["experiments"]
    treatment = next(arm for arm in experiment["arms"] if arm["name"] == "treatment")
    low, high = treatment["difference_ci95"]
    srm = experiment["srm"]
    contains = low <= TRUE_EFFECT <= high
    print(
        f"\ntrue effect {TRUE_EFFECT * 100:+.1f} points; the report estimates "
        f"{treatment['difference'] * 100:+.2f} points, 95% CI [{low * 100:+.2f}, "
        f"{high * 100:+.2f}]: CI {'contains' if contains else 'DOES NOT contain'} "
        "the true effect"
    )
    shares = ", ".join(f"{arm} {n:,}" for arm, n in sorted(srm["observed"].items()))
    verdict = "FAILS (sample ratio mismatch)" if srm["mismatch"] else "passes"
    unit = f"{experiment['unit']}s"
    print(f"split: {shares} {unit} against 50/50; SRM check p={srm['p_value']:.3g} {verdict}")
    if skewed:
        print(
            "expected: the SRM check fails, so the comparison is not to be trusted (here the "
            "lost users are a random draw and the estimate happens to survive; real losses "
            "rarely are random)"
            if srm["mismatch"]
            else "UNEXPECTED: the skewed split was not flagged"
        )
        return bool(srm["mismatch"])
    if not contains:
        # A 95% interval misses the truth for about 1 seed in 20: that is what 95% means.
        print(f"UNEXPECTED with seed {seed}: the interval missed (try another --seed)")
    if srm["mismatch"]:
        print("UNEXPECTED: the SRM check failed on an unskewed split")
    return contains and not srm["mismatch"]
