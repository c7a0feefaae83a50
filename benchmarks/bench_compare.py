"""How long one comparison takes, per comparator, on realistic 64 KiB answers.

Each scenario is a (production, shadow) pair of ~64 KiB JSON bodies shaped like a real
model server's answer, with the shadow differing the way a candidate model does. Three
figures per scenario, in microseconds of CPU time per pair (best of ``--repeat`` runs;
CPU time rather than wall time so that other processes on the machine matter less):

* ``compare``: ``shadowproxy.compare.compare(config, pair)``, everything included:
  status checks, parsing both bodies, ignore paths, extraction, serialising both
  predictions for the record, the comparator;
* ``parse``: just decoding both bodies (``orjson.loads``; SSE reassembly for streams),
  the floor any comparison pays, and a yardstick for the machine;
* ``judge``: just the comparator, on predictions already extracted (for ``exact`` with
  equal predictions, ``compare`` skips it: equal JSON texts are equal values).

Run: ``.venv/bin/python benchmarks/bench_compare.py [--repeat 7] [--seconds 0.05]``
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from shadowproxy.compare import CompareConfig, compare
from shadowproxy.compare.comparators import judge, resolve
from shadowproxy.compare.decode import decode
from shadowproxy.compare.extract import Extractor
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult

TARGET_BYTES = 64 * 1024
WORDS = [
    *("the", "model", "answer", "is", "a", "short", "text", "about", "paris", "france"),
    *("capital", "city", "river", "seine", "museum", "tower", "history", "people", "food"),
    *("wine", "art", "light", "night", "bridge", "street"),
]


@dataclass(frozen=True)
class Scenario:
    name: str
    config: CompareConfig
    prod: bytes
    shadow: bytes
    content_type: str = "application/json"


def grow(make_item: Callable[[int], Any]) -> list[Any]:
    """Items until their JSON array reaches ~64 KiB."""
    items: list[Any] = []
    size = 2
    while size < TARGET_BYTES:
        items.append(make_item(len(items)))
        size += len(orjson.dumps(items[-1])) + 1
    return items


def kserve(items: list[Any]) -> bytes:
    return orjson.dumps({"predictions": items})


def softmax(rng: random.Random, width: int) -> list[float]:
    raw = [rng.random() ** 3 for _ in range(width)]
    total = sum(raw)
    return [round(value / total, 6) for value in raw]


def numeric_scenarios(rng: random.Random) -> list[Scenario]:
    rows = grow(lambda _: [round(rng.uniform(0, 500), 6) for _ in range(4)])
    noisy = [[round(value * (1 + 1e-9), 6) for value in row] for row in rows]
    moved = [[round(value * (1 + rng.uniform(-0.05, 0.05)), 6) for value in row] for row in rows]
    config = CompareConfig(prediction="kserve-v1", kind="numeric")
    return [
        Scenario("numeric, identical", config, kserve(rows), kserve(rows)),
        Scenario("numeric, within tolerance", config, kserve(rows), kserve(noisy)),
        Scenario("numeric, every value differs", config, kserve(rows), kserve(moved)),
        Scenario(
            "auto -> numeric, every value differs",
            CompareConfig(prediction="kserve-v1"),
            kserve(rows),
            kserve(moved),
        ),
    ]


def label_scenarios(rng: random.Random) -> list[Scenario]:
    classes = ["cat", "dog", "bird", "fish", "horse", "sheep"]
    labels = grow(lambda _: rng.choice(classes))
    flipped = [rng.choice(classes) if rng.random() < 0.05 else label for label in labels]
    scores = grow(lambda _: softmax(rng, 10))
    rescored = [sorted(row) if rng.random() < 0.05 else row for row in scores]
    config = CompareConfig(prediction="kserve-v1", kind="label")
    return [
        Scenario("label, strings, 5% differ", config, kserve(labels), kserve(flipped)),
        Scenario("label, argmax of 10 scores, 5% differ", config, kserve(scores), kserve(rescored)),
    ]


def exact_scenarios(rng: random.Random) -> list[Scenario]:
    def answer(predictions: list[Any], request_id: int) -> bytes:
        return orjson.dumps(
            {
                "id": f"req-{request_id}",
                "created": 1_700_000_000 + request_id,
                "model_version": f"v{request_id}",
                "predictions": predictions,
            }
        )

    items = grow(
        lambda n: {"label": rng.choice(["spam", "ham"]), "score": round(rng.random(), 6), "n": n}
    )
    changed = [dict(item, label="spam") if item["n"] % 50 == 0 else item for item in items]
    config = CompareConfig(kind="exact", ignore=("$.id", "$.created", "$.model_version"))
    return [
        Scenario("exact, equal after ignore", config, answer(items, 1), answer(items, 2)),
        Scenario("exact, first difference deep", config, answer(items, 1), answer(changed, 2)),
    ]


def score_scenarios(rng: random.Random) -> list[Scenario]:
    dists = grow(lambda _: softmax(rng, 10))
    shifted = [softmax(rng, 10) if rng.random() < 0.2 else row for row in dists]
    ids = [f"item-{n}" for n in range(5000)]
    rankings = grow(lambda _: rng.sample(ids, 100))
    reranked = [row[:5] + rng.sample(row[5:], 95) for row in rankings]
    return [
        Scenario(
            "probabilities, 10 classes, 20% differ",
            CompareConfig(prediction="kserve-v1", kind="probabilities"),
            kserve(dists),
            kserve(shifted),
        ),
        Scenario(
            "ranking, top-100 lists, top_k 10",
            CompareConfig(prediction="kserve-v1", kind="ranking"),
            kserve(rankings),
            kserve(reranked),
        ),
    ]


def text_scenarios(rng: random.Random) -> list[Scenario]:
    def chat(content: str) -> bytes:
        return orjson.dumps({"choices": [{"index": 0, "message": {"content": content}}]})

    words = [rng.choice(WORDS) for _ in range(TARGET_BYTES // 6)]
    edited = [rng.choice(WORDS) if rng.random() < 0.05 else word for word in words]
    short = " ".join(words[:300])
    short_edit = " ".join(edited[:300])
    stream = b"".join(
        b"data: "
        + orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": f"{w} "}}]})
        + b"\n\n"
        for w in words[:2000]
    )
    config = CompareConfig(prediction="openai-chat", kind="text")
    return [
        Scenario("text, 300 words, 5% edited", config, chat(short), chat(short_edit)),
        Scenario(
            "text, 64 KiB answer, 5% edited", config, chat(" ".join(words)), chat(" ".join(edited))
        ),
        Scenario(
            "text, SSE stream of 2000 chunks vs JSON",
            config,
            stream + b"data: [DONE]\n\n",
            chat(" ".join(words[:2000])),
            "text/event-stream",
        ),
    ]


def make_pair(scenario: Scenario) -> Pair:
    request = RequestInfo(
        request_id="r",
        ts=0.0,
        route="bench",
        method="POST",
        path="/predict",
        query="",
        headers=[],
        body=b"{}",
        body_complete=True,
    )
    production = ProductionResult(
        status=200,
        latency_ms=1.0,
        error=None,
        body=scenario.prod,
        body_truncated=False,
        content_type=scenario.content_type,
    )
    shadow = ShadowResult(
        outcome="ok",
        status=200,
        latency_ms=1.0,
        error=None,
        body=scenario.shadow,
        body_truncated=False,
        content_type="application/json",
    )
    return Pair(
        request=request, shadow="candidate", role="candidate", production=production, result=shadow
    )


def best_us(run: Callable[[], object], seconds: float, repeat: int) -> float:
    """Best CPU microseconds per call over ``repeat`` runs of about ``seconds`` each."""
    start = time.process_time_ns()
    run()
    once = max(time.process_time_ns() - start, 1)
    number = max(1, int(seconds * 1e9 / once))
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time_ns()
        for _ in range(number):
            run()
        best = min(best, (time.process_time_ns() - start) / number / 1000)
    return best


def measure(scenario: Scenario, seconds: float, repeat: int) -> tuple[float, float, float, str]:
    pair = make_pair(scenario)
    config = scenario.config
    extract = Extractor.build(config)
    prod = extract("production", decode("production", scenario.prod, scenario.content_type, False))
    shadow = extract("shadow", decode("shadow", scenario.shadow, "application/json", False))
    kind, _ = resolve(config.kind, prod)
    result = compare(config, pair)
    assert result.agree is not None, result.detail
    full = best_us(lambda: compare(config, pair), seconds, repeat)
    parse = best_us(
        lambda: (
            decode("production", scenario.prod, scenario.content_type, False),
            decode("shadow", scenario.shadow, "application/json", False),
        ),
        seconds,
        repeat,
    )
    only = best_us(lambda: judge(kind, prod, shadow, config), seconds, repeat)
    return full, parse, only, result.comparator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.05, help="CPU time per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs (the best is shown)")
    args = parser.parse_args()
    rng = random.Random(4)
    scenarios = [
        *numeric_scenarios(rng),
        *label_scenarios(rng),
        *exact_scenarios(rng),
        *score_scenarios(rng),
        *text_scenarios(rng),
    ]
    print(f"{'scenario':<42} {'KiB':>9} {'compare':>9} {'parse':>9} {'judge':>9}  comparator")
    for scenario in scenarios:
        full, parse, only, comparator = measure(scenario, args.seconds, args.repeat)
        size = f"{len(scenario.prod) / 1024:.0f}+{len(scenario.shadow) / 1024:.0f}"
        figures = f"{full:>8.0f}µ {parse:>8.0f}µ {only:>8.0f}µ"
        print(f"{scenario.name:<42} {size:>9} {figures}  {comparator}")


if __name__ == "__main__":
    main()
