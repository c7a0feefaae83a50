"""``shadowproxy demo``: the whole idea, end to end, in under a minute.

Trains production v1 and candidate v2 on a data set inside scikit-learn, serves each
(plus a second replica of v1 as the ``baseline`` noise floor) from its own KServe v1
model server process, puts shadowproxy in front, replays held-out rows as traffic at
a steady rate, posts the true labels to ``/feedback`` a moment later ("wait and see"),
stops, and writes the report. Nothing is downloaded; no external service is needed.

That is the default scenario, ``shadow``. The others run the same models through the
other modes (``run_scenario``): ``canary-bad`` and ``canary-good`` (``demo.canary``),
``ab`` and ``ab-skewed`` (``demo.ab``), and ``chaos`` (``demo.chaos``).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
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
    stop_proxy,
    wait_for_stack,
    write_config,
)
from shadowproxy.loop import run_loop

FEEDBACK_DELAY_S = 1.0
FEEDBACK_BATCH = 500
SCENARIOS: dict[str, str] = {
    "shadow": "v2 shadows v1 with a baseline replica; labels posted; the report",
    "canary-bad": "v2 fails 20% of requests as a canary: the proxy rolls it back",
    "canary-good": "a healthy v2 canary advances through every step to completed",
    "ab": "v1 against v2 for 50/50 users, a known effect on outcomes; the report finds it",
    "ab-skewed": "the A/B test with treatment users lost: the report flags the split",
    "chaos": "the shadow demo with injected delays, aborts and corruptions",
}
GATE_MEANING = {0: "PROMOTE", 3: "HOLD: more evidence needed", 4: "REJECT"}
"""``report --gate`` exit statuses: each is a decision the demo shows, not a failure."""
RATE = 100.0
"""Requests per second of the shadow scenario (each other scenario's module has its own)."""


def run_scenario(
    name: str,
    out: Path | None = None,
    rate: float | None = None,
    *,
    keep_running: bool = False,
    seed: int = 1,
) -> int:
    """Run the named scenario into ``out`` (default ``demo-output``, or
    ``demo-output/<name>`` for the scenarios other than ``shadow``); exit status."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; one of: {', '.join(SCENARIOS)}")
    if keep_running and name != "shadow":
        print("--keep-running only applies to the shadow scenario", file=sys.stderr)
        return 2
    if out is None:
        out = Path("demo-output") if name == "shadow" else Path("demo-output", name)
    if name == "shadow":
        return run_demo(out, rate or RATE, keep_running)
    if name in ("canary-bad", "canary-good"):
        from shadowproxy.demo import canary

        return canary.run(out, bad=name == "canary-bad", rate=rate or canary.RATE, seed=seed)
    if name in ("ab", "ab-skewed"):
        from shadowproxy.demo import ab

        return ab.run(out, skewed=name == "ab-skewed", rate=rate or ab.RATE, seed=seed)
    from shadowproxy.demo import chaos

    return chaos.run(out, rate or chaos.RATE)


def shadow_route(stack: Stack, rules: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """v2 as the candidate shadow of v1, a v1 replica as the baseline."""
    route: dict[str, Any] = {
        "name": "digits",
        "match": {"path_prefix": "/v1/models/digits", "methods": ["POST"]},
        "production": {"url": stack.models["v1"], "timeout_s": 10},
        "shadows": [
            {"name": "candidate-v2", "url": stack.models["v2"], "role": "candidate"},
            {"name": "baseline-v1", "url": stack.models["v1-replica"], "role": "baseline"},
        ],
        "compare": {"prediction": "kserve-v1", "kind": "label"},
        # Written down before the run: what v2 must show to replace v1 (the defaults).
        "promotion": {
            "min_labels": 500,
            "accuracy": {"non_inferiority_margin": 0.01},
            "disagreement": {"max_excess_over_baseline": 0.02},
            "latency_p99": {"max_ratio": 1.2},
            "error_rate": {"max_increase": 0.005},
        },
    }
    if rules:
        route["chaos"] = list(rules)
    return route


def start_shadow_stack(
    out: Path, children: list[subprocess.Popen[bytes]], rules: Sequence[dict[str, Any]] = ()
) -> tuple[Stack, DemoData, subprocess.Popen[bytes]]:
    """Train, write the config, start v1, v2, the v1 replica and the proxy."""
    print("training production v1 (logistic regression) and candidate v2 (gradient boosting)...")
    paths, data = train(out)
    stack = Stack.on_free_ports(("v1", "v2", "v1-replica"))
    config = write_config(out, stack, shadow_route(stack, rules))
    for name, url in stack.models.items():
        start_model(children, url, paths["v1" if name == "v1-replica" else name], name)
    return stack, data, start_proxy(children, config)


async def replay(
    session: aiohttp.ClientSession, url: str, data: DemoData, rate: float
) -> list[str]:
    """Send each held-out row once, on a fixed schedule (open loop), with a progress bar."""
    from rich.progress import Progress

    run = uuid.uuid4().hex[:8]
    ids = [f"demo-{run}-{index:05d}" for index in range(len(data.rows))]
    started = time.monotonic()
    failures = 0

    with Progress(transient=False) as progress:
        task = progress.add_task(f"replaying {len(ids)} requests at {rate:g}/s", total=len(ids))

        async def send(index: int) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            body = orjson.dumps({"instances": [data.rows[index]]})
            headers = {"Content-Type": "application/json", "X-Request-Id": ids[index]}
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                failures += response.status != 200
            progress.advance(task)

        await asyncio.gather(*(send(index) for index in range(len(ids))))
    if failures:
        print(f"warning: {failures} requests did not get a 200 from production")
    return ids


async def post_feedback(
    session: aiohttp.ClientSession, admin: str, items: Sequence[dict[str, Any]], what: str
) -> None:
    """POST ``items`` to ``/feedback`` in batches, as a labelling job or an event
    pipeline would, a moment after the answers ("wait and see")."""
    await asyncio.sleep(FEEDBACK_DELAY_S)
    for start in range(0, len(items), FEEDBACK_BATCH):
        batch = items[start : start + FEEDBACK_BATCH]
        async with session.post(f"{admin}/feedback", json=batch) as response:
            if response.status != 202:
                raise RuntimeError(f"/feedback answered {response.status}: {await response.text()}")
    print(f"posted {len(items)} {what} to {admin}/feedback")


def labels_of(ids: Sequence[str], labels: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {"request_id": request_id, "label": label}
        for request_id, label in zip(ids, labels, strict=True)
    ]


async def drive(stack: Stack, data: DemoData, rate: float, keep_running: bool) -> None:
    async with aiohttp.ClientSession() as session:
        await wait_for_stack(session, stack)
        ids = await replay(session, f"{stack.proxy}{PREDICT_PATH}", data, rate)
        await post_feedback(
            session, stack.admin, labels_of(ids, data.labels), "ground-truth labels"
        )
        if keep_running:
            print_urls(stack, data.rows[0])
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()


def print_urls(stack: Stack, example: list[float]) -> None:
    body = orjson.dumps({"instances": [example]}).decode()
    print(
        "\nThe stack is up. Try:\n"
        f"  curl -s -X POST {stack.proxy}{PREDICT_PATH} -d '{body}'\n"
        f"  curl -s {stack.admin}/metrics | grep shadowproxy_comparisons\n"
        f"  curl -s {stack.admin}/routes\n"
        f"models: {', '.join(f'{k} {v}' for k, v in stack.models.items())}\n"
        "Ctrl-C stops everything and writes the report.\n",
        flush=True,
    )


def run_demo(out: Path, rate: float = RATE, keep_running: bool = False) -> int:
    out = prepare(out)
    began = time.monotonic()
    with processes() as children:
        stack, data, proxy = start_shadow_stack(out, children)
        try:
            run_loop(drive(stack, data, rate, keep_running))
        except KeyboardInterrupt:
            print("\nstopping...")
        if not stop_proxy(proxy):
            return 1
    # As a CD pipeline would call it: --gate makes the exit status the decision.
    code = run_report(out, "--config", str(out / "shadowproxy.yaml"), "--gate")
    print(
        f"\nreport: {out / 'report.html'}\nsummary: {out / 'summary.json'}\n"
        f"gate: exit status {code} ({GATE_MEANING.get(code, 'bad input')})\n"
        f"demo took {time.monotonic() - began:.0f}s"
    )
    return 0 if code in GATE_MEANING else code
