"""``demo --scenario drift``: watching a model without labels.

Production v1 and a shadow v2 serve handwritten digits and put ``model_version`` in
their answers. Halfway through, the traffic changes: a new tablet model sends wider
pen strokes (the ``pen_width`` request field moves up by two standard deviations; the
pixels do not change). At request ``RELEASE_AT`` production is redeployed behind the
same address as v1.1, retrained on data where a labelling bug turned every 3 into an 8:
its prediction mix jumps. The route's ``monitor:`` block watches every answer, and
``shadowproxy report --config`` finds the drifted feature and the release; nothing
else should be flagged. No labels are posted: none are needed.
"""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from shadowproxy.demo.models import SEED, DemoData, train
from shadowproxy.demo.stack import (
    PREDICT_PATH,
    Stack,
    prepare,
    processes,
    start_model,
    start_proxy,
    steady,
    stop_proxy,
    wait_for_stack,
    write_config,
)
from shadowproxy.loop import run_loop

RATE = 150.0
REQUESTS = 1600
SHIFT_AT = 800
RELEASE_AT = 1200
BROKEN_SHARE = 0.01
"""Requests a buggy client sends with 63 pixels instead of 64 (the length invariant)."""

MONITOR: dict[str, Any] = {
    "sample_rate": 1.0,
    "prediction": {"kind": "label"},
    "features": [
        {"name": "pen_width", "path": "$.pen_width", "kind": "numeric"},
        {"name": "pixel_28", "path": "$.instances[*][28]", "kind": "numeric"},
        {"name": "source", "path": "$.source", "kind": "categorical", "max_categories": 5},
    ],
    "invariants": [
        {"name": "known_class", "target": "prediction", "in": list(range(10))},
        {"name": "sixty_four_pixels", "target": "request", "path": "$.instances[*]", "length": 64},
    ],
    "jump_window": 300,
}


def run(out: Path, rate: float = RATE, seed: int = 1) -> int:
    out = prepare(out)
    began = time.monotonic()
    print("training v1 and v2, and v1.1 with a labelling bug (every 3 labelled 8)...")
    paths, data = train(out)
    release = train_release(out)
    stack = Stack.on_free_ports(("v1", "v2"))
    config = write_config(out, stack, route(stack))
    print(f"config: {config} and {out / 'routes' / 'digits.yaml'}")
    with processes() as children:
        start_model(children, stack.models["v1"], paths["v1"], "v1", "--version", "v1",
                    "--next-model", str(release), "--next-version", "v1.1")  # fmt: skip
        start_model(children, stack.models["v2"], paths["v2"], "v2", "--version", "v2")
        proxy = start_proxy(children, config)
        run_loop(drive(stack, data, rate, seed))
        if not stop_proxy(proxy):
            return 1
    if report(out, config) != 0:
        return 1
    ok = conclude(out / "summary.json")
    print(
        f"\nreport: {out / 'report.html'}\nsummary: {out / 'summary.json'}\n"
        f"scenario took {time.monotonic() - began:.0f}s"
    )
    return 0 if ok else 1


def train_release(directory: Path) -> Path:
    """v1 retrained on labels where every 3 became an 8: the release with a bug."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, target = load_digits(return_X_y=True)
    x_train, _, y_train, _ = train_test_split(
        features, target, test_size=0.5, random_state=SEED, stratify=target
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, [8 if label == 3 else label for label in y_train])
    path = directory / "digits-v1.1.pkl"
    path.write_bytes(pickle.dumps(model))
    return path


def route(stack: Stack) -> dict[str, Any]:
    return {
        "name": "digits",
        "match": {"path_prefix": "/v1/models/digits", "methods": ["POST"]},
        "production": {"url": stack.models["v1"], "timeout_s": 10},
        "shadows": [{"name": "candidate-v2", "url": stack.models["v2"], "sample_rate": 0.25}],
        "compare": {"prediction": "kserve-v1", "kind": "label", "ignore": ["$.model_version"]},
        "monitor": MONITOR,
    }


def request_body(rng: random.Random, data: DemoData, index: int) -> bytes:
    row = data.rows[index % len(data.rows)]
    if rng.random() < BROKEN_SHARE:
        row = row[:63]
    pen = rng.gauss(2.6 if index >= SHIFT_AT else 2.0, 0.3)
    source = rng.choices(["web", "ios", "android"], weights=[6, 3, 1])[0]
    return orjson.dumps({"instances": [row], "pen_width": round(pen, 3), "source": source})


async def drive(stack: Stack, data: DemoData, rate: float, seed: int) -> None:
    rng = random.Random(seed)
    bodies = [request_body(rng, data, index) for index in range(REQUESTS)]
    url = f"{stack.proxy}{PREDICT_PATH}"
    async with aiohttp.ClientSession() as session:
        await wait_for_stack(session, stack)

        async def send(index: int) -> None:
            if index == RELEASE_AT:
                async with session.post(f"{stack.models['v1']}/admin/deploy") as response:
                    print(f"request {index}: production redeployed: {await response.text()}")
            headers = {"Content-Type": "application/json", "X-Request-Id": f"drift-{index:05d}"}
            async with session.post(url, data=bodies[index], headers=headers) as response:
                await response.read()

        print(f"sending {REQUESTS} requests at {rate:g}/s; pen_width shifts at {SHIFT_AT}")
        await steady(rate, send, count=REQUESTS)


def report(out: Path, config: Path) -> int:
    command = [sys.executable, "-m", "shadowproxy", "report", str(out / "shadow-logs"),
               "--config", str(config), "--out", str(out / "report.html"),
               "--json", str(out / "summary.json")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
    return done.returncode


def conclude(summary: Path) -> bool:
    """Print what the report found; True when it is what the scenario did."""
    found = orjson.loads(summary.read_bytes())["drift"]["digits"]
    flagged = [f for f in found["features"] if f["flagged"]]
    for feature in flagged:
        effect = feature["effect"]
        print(
            f"drifted feature: {feature['name']} (PSI {feature['psi']:.2f}, mean "
            f"{effect['reference_mean']:.2f} -> {effect['current_mean']:.2f})"
        )
    for jump in found["jumps"]:
        psi = jump["prediction"]["psi"] if jump["prediction"] else float("nan")
        moved = jump["prediction"]["effect"]["moved"][:2] if jump["prediction"] else []
        classes = ", ".join(
            f"class {m['category']} {100 * m['reference_share']:.0f}% -> "
            f"{100 * m['current_share']:.0f}%"
            for m in moved
        )
        state = "flagged" if jump["flagged"] else "not flagged"
        print(
            f"release jump: {jump['from_version']} -> {jump['to_version']} at {jump['at']} "
            f"({state}; prediction PSI {psi:.2f}: {classes})"
        )
    for rule in found["invariants"]:
        if rule["count"]:
            print(f"invariant {rule['name']} ({rule['role']}): {rule['count']} of {rule['n']}")
    names = [f["name"] for f in flagged]
    releases = [(j["from_version"], j["to_version"]) for j in found["jumps"] if j["flagged"]]
    ok = names == ["pen_width"] and ("v1", "v1.1") in releases
    if not ok:
        print(f"UNEXPECTED: flagged {names}, releases {releases}")
    return ok
