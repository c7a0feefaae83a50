"""How fast the recorder writes, and what it costs the event loop.

Measures, with 4 KiB JSON bodies (request, production and shadow each):

* ``submit``: event-loop cost per call, alone and while the writer thread is busy
  (the writer's Python work competes for the GIL);
* writer throughput: rows/s from the first submit until ``close()`` has written the
  last file, for plain recording, redaction plus a comparer, and ``bodies: false``;
* event-loop lag while the writer runs: how late a 1 ms ``asyncio.sleep`` wakes up.

Run: ``.venv/bin/python benchmarks/bench_recording.py [--pairs 100000]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

import orjson
from prometheus_client import CollectorRegistry

from shadowproxy.compare import jsonpath
from shadowproxy.config import RecordingConfig, RouteConfig
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from shadowproxy.records import Comparison, Pair, ProductionResult, RequestInfo, ShadowResult

BODY_BYTES = 4096
VARIANTS = 1000


def json_body(rng: random.Random, key: str) -> bytes:
    """A ~4 KiB JSON document shaped like a model request or answer."""
    doc: dict[str, object] = {"customer": {"id": rng.randrange(10**6), "ssn": "123-45-6789"}}
    values: list[float] = []
    doc[key] = values
    while len(orjson.dumps(doc)) < BODY_BYTES:
        values.append(round(rng.random(), 6))
    return orjson.dumps(doc)


def make_pairs(count: int, seed: int = 7) -> list[Pair]:
    rng = random.Random(seed)
    requests = [json_body(rng, "instances") for _ in range(VARIANTS)]
    answers = [json_body(rng, "predictions") for _ in range(VARIANTS)]
    now = time.time()
    pairs = []
    for n in range(count):
        info = RequestInfo(
            request_id=f"req-{n:08d}",
            ts=now,
            route="price",
            method="POST",
            path="/v1/predict",
            query="",
            headers=[],
            body=requests[n % VARIANTS],
            body_complete=True,
        )
        prod = ProductionResult(
            status=200,
            latency_ms=4.2,
            error=None,
            body=answers[n % VARIANTS],
            body_truncated=False,
            content_type="application/json",
        )
        shadow = ShadowResult(
            outcome="ok",
            status=200,
            latency_ms=5.1,
            error=None,
            body=answers[(n + 1) % VARIANTS],
            body_truncated=False,
            content_type="application/json",
        )
        pairs.append(
            Pair(request=info, shadow="candidate", role="candidate", production=prod, result=shadow)
        )
    return pairs


_PREDICTIONS = jsonpath.parse("$.predictions")


def comparer(pair: Pair) -> Comparison:
    """A stand-in comparator: parse both answers, compare one field."""
    prod = _PREDICTIONS.find(orjson.loads(pair.production.body))
    shadow = _PREDICTIONS.find(orjson.loads(pair.result.body))
    agree = prod == shadow
    text = orjson.dumps(prod[0][:4]).decode(), orjson.dumps(shadow[0][:4]).decode()
    return Comparison("exact", text[0], text[1], agree, 0.0 if agree else 1.0, None)


@dataclass
class Result:
    name: str
    rows: int
    seconds: float
    submit_us: float
    lag_ms: list[float]

    def show(self) -> str:
        lag = sorted(self.lag_ms) or [0.0]
        p99 = lag[min(len(lag) - 1, int(len(lag) * 0.99))]
        return (
            f"{self.name:<28} {self.rows / self.seconds:>10,.0f} rows/s  "
            f"submit {self.submit_us:5.2f} us  "
            f"loop lag p50 {statistics.median(lag):5.2f} ms  p99 {p99:6.2f} ms  "
            f"max {lag[-1]:6.2f} ms"
        )


async def throughput(name: str, pairs: list[Pair], route: RouteConfig, compare: bool) -> Result:
    with tempfile.TemporaryDirectory() as root:
        recording = RecordingConfig(dir=root)
        metrics = Metrics(CollectorRegistry())
        recorder = Recorder(recording, [route], metrics, comparer if compare else None)
        await recorder.start()
        lag: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.get_running_loop().create_task(_measure_lag(lag, stop))
        started = time.perf_counter()
        submit_s = await _feed(recorder, pairs, recording.max_pending_records)
        await recorder.close()
        elapsed = time.perf_counter() - started
        stop.set()
        await ticker
        assert read_dataset(root).num_rows == len(pairs), "rows lost"
    return Result(name, len(pairs), elapsed, submit_s / len(pairs) * 1e6, lag)


async def _feed(recorder: Recorder, pairs: list[Pair], bound: int, chunk: int = 1000) -> float:
    """Submit everything as fast as the bound allows; returns seconds spent in submit."""
    spent = 0.0
    for start in range(0, len(pairs), chunk):
        # The writer thread lowers ``pending``: there is nothing to await but time.
        while recorder.pending > bound - chunk:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        began = time.perf_counter()
        for pair in pairs[start : start + chunk]:
            recorder.submit(pair)
        spent += time.perf_counter() - began
        await asyncio.sleep(0)
    return spent


async def _measure_lag(lag: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(0.001)
        lag.append((time.perf_counter() - began) * 1000 - 1.0)


def submit_alone(pairs: list[Pair]) -> float:
    """µs per submit with no writer running: the pure append path."""
    recording = RecordingConfig(dir=tempfile.gettempdir(), max_pending_records=len(pairs) + 1)
    recorder = Recorder(recording, [], Metrics(CollectorRegistry()))
    began = time.perf_counter()
    for pair in pairs:
        recorder.submit(pair)
    return (time.perf_counter() - began) / len(pairs) * 1e6


def route(**record: object) -> RouteConfig:
    return RouteConfig.model_validate(
        {
            "name": "price",
            "match": {"path_prefix": "/v1"},
            "production": {"url": "http://127.0.0.1:1"},
            "record": record,
        }
    )


async def main(count: int) -> None:
    pairs = make_pairs(count)
    # The fixture's pairs are the benchmark's, not the recorder's: keep them out of
    # garbage-collector scans so the loop-lag figures measure the recorder.
    gc.freeze()
    print(f"{count:,} pairs, bodies {BODY_BYTES} B x 3, zstd, defaults otherwise")
    print(f"submit alone (no writer running)   {submit_alone(pairs):5.2f} us per call")
    scenarios: list[tuple[str, RouteConfig, bool]] = [
        ("plain", route(), False),
        ("redact 2 paths + comparer", route(redact=["$.customer.ssn", "$.customer.id"]), True),
        ("bodies: false + comparer", route(bodies=False), True),
    ]
    for name, config, compare in scenarios:
        result = await throughput(name, pairs, config, compare)
        print(result.show())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().pairs))
