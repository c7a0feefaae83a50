"""``shadowproxy demo --scenario chaos``: faults injected on purpose, and seen.

The shadow demo (v2 shadows v1, a v1 replica as the baseline) with the route's
``chaos:`` rules delaying, aborting and corrupting a share of the candidate's copies.
Production's answers are untouched. The scenario prints what the proxy counted in
``shadowproxy_chaos_injected_total`` and succeeds when every fault was counted and the
report's chaos section says the monitoring noticed each one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.demo import labels_of, post_feedback, replay, start_shadow_stack
from shadowproxy.demo.models import DemoData
from shadowproxy.demo.stack import (
    PREDICT_PATH,
    Stack,
    prepare,
    processes,
    run_report,
    stop_proxy,
    wait_for_stack,
)
from shadowproxy.loop import run_loop

RATE = 100.0
TARGET = "shadow:candidate-v2"
RULES: list[dict[str, Any]] = [
    {"target": TARGET, "fraction": 0.1, "delay_ms": 200},
    {"target": TARGET, "fraction": 0.05, "abort_status": 503},
    {"target": TARGET, "fraction": 0.05, "corrupt_prediction": True},
]
METRIC = "shadowproxy_chaos_injected_total"


def run(out: Path, rate: float = RATE) -> int:
    out = prepare(out)
    began = time.monotonic()
    print(f"chaos on {TARGET}: {'; '.join(describe(rule) for rule in RULES)}")
    with processes() as children:
        stack, data, proxy = start_shadow_stack(out, children, RULES)
        print(f"config: {out / 'shadowproxy.yaml'} and {out / 'routes' / 'digits.yaml'}")
        injected = run_loop(drive(stack, data, rate))
        if not stop_proxy(proxy):
            return 1
    if run_report(out) != 0:
        return 1
    ok = conclude(out / "summary.json", injected)
    print(
        f"\nreport: {out / 'report.html'}\nsummary: {out / 'summary.json'}\n"
        f"scenario took {time.monotonic() - began:.0f}s"
    )
    return 0 if ok else 1


def describe(rule: dict[str, Any]) -> str:
    if "delay_ms" in rule:
        fault = f"delay {rule['delay_ms']} ms"
    elif "abort_status" in rule:
        fault = f"abort with {rule['abort_status']}"
    else:
        fault = "corrupt the prediction"
    return f"{fault} on {rule['fraction']:.0%} of copies"


async def drive(stack: Stack, data: DemoData, rate: float) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        await wait_for_stack(session, stack)
        ids = await replay(session, f"{stack.proxy}{PREDICT_PATH}", data, rate)
        await post_feedback(
            session, stack.admin, labels_of(ids, data.labels), "ground-truth labels"
        )
        async with session.get(f"{stack.admin}/metrics") as response:
            exposition = await response.text()
    injected: dict[str, float] = {}
    print(f"\n{METRIC} on {stack.admin}/metrics:")
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == METRIC:
                labels = ",".join(f'{key}="{value}"' for key, value in sample.labels.items())
                print(f"  {METRIC}{{{labels}}} {sample.value:g}")
                injected[sample.labels["fault"]] = sample.value
    return injected


def conclude(summary: Path, injected: dict[str, float]) -> bool:
    checks = orjson.loads(summary.read_bytes())["chaos"]
    counted = all(injected.get(fault, 0) > 0 for fault in ("delay", "abort", "corrupt"))
    noticed = {check["fault"]: check["noticed"] for check in checks}
    ok = counted and len(noticed) == len(RULES) and all(v is True for v in noticed.values())
    print(
        "\nevery injected fault was counted in the metrics and noticed by the report"
        if ok
        else f"UNEXPECTED: counted {injected}, noticed {noticed}"
    )
    return ok
