"""Synthetic recordings with known truth, in exactly the recorder's on-disk layout.

The report is tested and benchmarked against datasets whose answers are known by
construction: a shadow told to disagree on 10% of compared rows disagrees on exactly
``round(0.1 * compared)`` of them, and one given ``fixes=40, breaks=10`` on 1,000
labels is exactly 3 accuracy points better than production. The files follow the
dataset contract (Hive-partitioned ``pairs/route=R/date=D/*.parquet`` plus
``feedback/date=D/*.parquet``), so the report never sees anything the recorder could
not write.

Deterministic: the same spec and seed always give byte-identical tables.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from shadowproxy.recording.schema import FEEDBACK_SCHEMA, PAIRS_SCHEMA

CLASSES = ("cat", "dog", "bird", "fish")
COUNTRIES = ("US", "DE", "FR", "JP", "BR")
REGRESSION_TOLERANCE = 0.01
"""Relative difference up to which the synthetic numeric comparator says "agree"."""

Failure = Literal["error", "timeout", "dropped", "skipped"]


@dataclass(frozen=True)
class ShadowSpec:
    """One shadow of a route and the truth it is built to exhibit."""

    name: str
    role: Literal["candidate", "baseline"] = "candidate"
    disagree: float = 0.0
    """Share of compared rows that disagree with production (rounded to a count)."""
    fixes: int = 0
    """Labeled requests production gets wrong and this shadow gets right."""
    breaks: int = 0
    """Labeled requests production gets right and this shadow gets wrong."""
    failures: Mapping[Failure, int] = field(default_factory=dict)
    """Exact number of rows with each non-ok outcome (never on labeled requests)."""
    latency_shift_ms: float = 0.0
    segment_disagree: Mapping[str, float] | None = None
    """Per-country disagreement share; replaces ``disagree`` for unlabeled rows."""


@dataclass(frozen=True)
class RouteSpec:
    name: str
    requests: int
    shadows: tuple[ShadowSpec, ...]
    task: Literal["classification", "regression"] = "classification"
    prediction_format: Literal["label", "list", "scores"] = "label"
    """How predictions are written: ``"cat"``, ``["cat"]`` or a score vector."""
    labeled: int = 0
    prod_correct: float = 0.8
    """Share of labeled requests production classifies right (rounded to a count)."""


@dataclass(frozen=True)
class DatasetSpec:
    routes: tuple[RouteSpec, ...]
    start: datetime = datetime(2024, 5, 1, tzinfo=UTC)
    duration: timedelta = timedelta(days=2)
    body_bytes: int = 300
    requests_per_file: int = 20_000
    seed: int = 7
    labels_in: Literal["feedback", "file", "none"] = "feedback"
    stale_feedback: bool = True
    """Also write an older, wrong label for some requests (the latest must win)."""
    temp_file: bool = True
    """Leave a half-written ``.tmp`` file behind, as a crashed writer would."""


@dataclass
class PairTruth:
    rows: int = 0
    compared: int = 0
    agreed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    labeled: int = 0
    prod_correct: int = 0
    shadow_correct: int = 0


@dataclass
class Truth:
    """What the report must find, per ``(route, shadow)``."""

    pairs: dict[tuple[str, str], PairTruth] = field(default_factory=dict)
    labels_file: Path | None = None


def example_spec(requests: int = 2000, **changes: Any) -> DatasetSpec:
    """The tests' dataset: every number in it is known exactly.

    Route ``churn`` (classification, 1,000 labels, production right on 800): shadow
    ``candidate`` disagrees on exactly 10% of compared rows and is right on 830 labels
    (+3.0 points: 40 fixes, 10 breaks); ``baseline`` disagrees on 1%. Route
    ``house-price`` (regression, 500 labels): ``price-v3`` disagrees on 5%, fails some
    copies, and does worse in France (segment ``$.instances[0].country`` = ``FR``).
    """
    labeled = min(1000, requests // 2)
    churn = RouteSpec(
        "churn",
        requests,
        (
            ShadowSpec(
                "candidate",
                disagree=0.1,
                fixes=labeled // 25,
                breaks=labeled // 100,
                latency_shift_ms=5.0,
            ),
            ShadowSpec("baseline", role="baseline", disagree=0.01),
        ),
        labeled=labeled,
    )
    house = RouteSpec(
        "house-price",
        requests,
        (
            ShadowSpec(
                "price-v3",
                fixes=labeled // 10,
                failures={"error": 20, "timeout": 10, "dropped": 6, "skipped": 4},
                segment_disagree={"US": 0.02, "DE": 0.02, "FR": 0.25, "JP": 0.02, "BR": 0.02},
            ),
        ),
        task="regression",
        labeled=labeled // 2,
    )
    return replace(DatasetSpec(routes=(churn, house)), **changes)


def generate(root: Path | str, spec: DatasetSpec) -> Truth:
    """Write the dataset under ``root`` and return its truth."""
    root = Path(root)
    truth = Truth()
    labels: list[tuple[str, str, datetime]] = []
    for route in spec.routes:
        plan = _RoutePlan(route, spec)
        for shadow in route.shadows:
            truth.pairs[(route.name, shadow.name)] = plan.truth(shadow)
        _write_pairs(root, spec, plan)
        labels.extend(plan.labels())
    if spec.labels_in == "feedback":
        _write_feedback(root, spec, labels)
    elif spec.labels_in == "file":
        truth.labels_file = _write_labels_csv(root.parent / f"{root.name}-labels.csv", labels)
    if spec.temp_file and spec.routes:
        _write_temp_file(root, spec)
    return truth


class _RoutePlan:
    """Every per-request and per-shadow decision of one route, drawn once from the seed."""

    def __init__(self, route: RouteSpec, spec: DatasetSpec) -> None:
        self.route = route
        self.spec = spec
        rng = random.Random(f"{spec.seed}:{route.name}")
        n = route.requests
        self.labeled = set(rng.sample(range(n), route.labeled))
        labeled_sorted = sorted(self.labeled)
        self.prod_right = set(
            rng.sample(labeled_sorted, round(route.prod_correct * len(labeled_sorted)))
        )
        self.shadow_plans = {s.name: _ShadowPlan(s, self, rng) for s in route.shadows}

    def label_index(self, i: int) -> int:
        return (i * 7 + i // 3) % len(CLASSES)

    def prod_class(self, i: int) -> int:
        label = self.label_index(i)
        right = i in self.prod_right if i in self.labeled else i % 5 != 0
        return label if right else (label + 1) % len(CLASSES)

    def true_value(self, i: int) -> float:
        return 100.0 + (i % 97) * 1.5

    def prod_value(self, i: int) -> float:
        return self.true_value(i) + ((i * 7) % 11 - 5) * 0.5

    def truth(self, shadow: ShadowSpec) -> PairTruth:
        return self.shadow_plans[shadow.name].truth

    def labels(self) -> list[tuple[str, str, datetime]]:
        return [(self.request_id(i), self.label_json(i), self.ts(i)) for i in sorted(self.labeled)]

    def label_json(self, i: int) -> str:
        if self.route.task == "regression":
            return json.dumps(self.true_value(i))
        if self.route.prediction_format == "scores":
            return json.dumps(self.label_index(i))
        return json.dumps(CLASSES[self.label_index(i)])

    def request_id(self, i: int) -> str:
        return f"{self.route.name}-{i:08d}"

    def ts(self, i: int) -> datetime:
        return self.spec.start + self.spec.duration * (i / max(self.route.requests, 1))


class _ShadowPlan:
    def __init__(self, shadow: ShadowSpec, plan: _RoutePlan, rng: random.Random) -> None:
        self.spec = shadow
        n = plan.route.requests
        unlabeled = [i for i in range(n) if i not in plan.labeled]
        failed = rng.sample(unlabeled, sum(shadow.failures.values()))
        self.outcome: dict[int, str] = {}
        cursor = 0
        for outcome, count in shadow.failures.items():
            for i in failed[cursor : cursor + count]:
                self.outcome[i] = outcome
            cursor += count
        labeled = sorted(plan.labeled)
        right = [i for i in labeled if i in plan.prod_right]
        wrong = [i for i in labeled if i not in plan.prod_right]
        self.fixes = set(rng.sample(wrong, shadow.fixes))
        self.breaks = set(rng.sample(right, shadow.breaks))
        ok_unlabeled = [i for i in unlabeled if i not in self.outcome]
        compared = n - len(failed)
        self.disagree = (
            self.fixes | self.breaks | self._other_disagreements(plan, ok_unlabeled, compared, rng)
        )
        self.truth = PairTruth(
            rows=n,
            compared=compared,
            agreed=compared - len(self.disagree),
            outcomes={o: list(self.outcome.values()).count(o) for o in _OUTCOMES},
            labeled=len(labeled),
            prod_correct=len(right),
            shadow_correct=len(right) - len(self.breaks) + len(self.fixes),
        )
        self.truth.outcomes["ok"] = compared

    def _other_disagreements(
        self, plan: _RoutePlan, candidates: list[int], compared: int, rng: random.Random
    ) -> set[int]:
        rates = self.spec.segment_disagree
        if rates is None:
            count = round(self.spec.disagree * compared) - len(self.fixes) - len(self.breaks)
            if count < 0 or count > len(candidates):
                raise ValueError(f"shadow {self.spec.name}: disagree share cannot be met")
            return set(rng.sample(candidates, count))
        chosen: set[int] = set()
        for country, rate in rates.items():
            pool = [i for i in candidates if _country(i) == country]
            chosen.update(rng.sample(pool, round(rate * len(pool))))
        return chosen


_OUTCOMES = ("error", "timeout", "dropped", "skipped")


def _country(i: int) -> str:
    return COUNTRIES[(i * 3 + i // 7) % len(COUNTRIES)]


# --- rows ----------------------------------------------------------------------------


def _write_pairs(root: Path, spec: DatasetSpec, plan: _RoutePlan) -> None:
    for day, first, last in _day_ranges(plan):
        directory = root / "pairs" / f"route={plan.route.name}" / f"date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        for part, start in enumerate(range(first, last, spec.requests_per_file)):
            stop = min(start + spec.requests_per_file, last)
            table = _pairs_table(spec, plan, range(start, stop))
            pq.write_table(table, directory / f"part-{part:05d}.parquet", compression="zstd")


def _day_ranges(plan: _RoutePlan) -> Iterator[tuple[str, int, int]]:
    """Consecutive request ranges that fall on one UTC date (timestamps increase)."""
    start = 0
    n = plan.route.requests
    while start < n:
        day = plan.ts(start).date()
        stop = start
        while stop < n and plan.ts(stop).date() == day:
            stop += 1
        yield day.isoformat(), start, stop
        start = stop


def _pairs_table(spec: DatasetSpec, plan: _RoutePlan, requests: range) -> pa.Table:
    rng = random.Random(f"{spec.seed}:{plan.route.name}:{requests.start}")
    columns: dict[str, list[Any]] = {name: [] for name in PAIRS_SCHEMA.names}
    for i in requests:
        request = _request_fields(spec, plan, i, rng)
        for shadow in plan.route.shadows:
            row = request | _shadow_fields(spec, plan, plan.shadow_plans[shadow.name], i, rng)
            # Columns the generator has no truth for (withheld flags, content types)
            # stay null, as they do for a recorder that saw none.
            for name, values in columns.items():
                values.append(row.get(name))
    return pa.table(columns, schema=PAIRS_SCHEMA)


def _pad(rng: random.Random, size: int) -> str:
    return rng.randbytes(max(size, 0) // 2).hex()


def _request_fields(
    spec: DatasetSpec, plan: _RoutePlan, i: int, rng: random.Random
) -> dict[str, Any]:
    body = json.dumps({"instances": [{"country": _country(i), "x": i % 100}]})
    padded = body[:-3] + f', "pad": "{_pad(rng, spec.body_bytes - len(body) - 12)}"' + "}]}"
    prod_latency = 20.0 + (i % 13) * 1.3 + rng.random() * 5.0
    prediction = _prod_prediction(plan, i)
    return {
        "request_id": plan.request_id(i),
        "ts": plan.ts(i),
        "method": "POST",
        "path": f"/v1/models/{plan.route.name}:predict",
        "query": "",
        "prod_status": 200,
        "prod_latency_ms": prod_latency,
        "prod_error": None,
        "request_body": padded.encode(),
        "request_body_truncated": False,
        "prod_body": _answer_body(prediction, spec.body_bytes, rng),
        "prod_body_truncated": False,
        "prod_prediction": prediction,
    }


def _prediction(plan: _RoutePlan, class_index: int, value: float) -> str:
    if plan.route.task == "regression":
        return json.dumps([value] if plan.route.prediction_format == "list" else value)
    if plan.route.prediction_format == "scores":
        scores = [0.1] * len(CLASSES)
        scores[class_index] = 1.0 - 0.1 * (len(CLASSES) - 1)
        return json.dumps([round(s, 2) for s in scores])
    name = CLASSES[class_index]
    return json.dumps([name] if plan.route.prediction_format == "list" else name)


def _answer_body(prediction: str, size: int, rng: random.Random) -> bytes:
    body = f'{{"predictions": [{prediction}], "pad": "'
    return (body + _pad(rng, size - len(body) - 2) + '"}').encode()


def _shadow_fields(
    spec: DatasetSpec, plan: _RoutePlan, shadow: _ShadowPlan, i: int, rng: random.Random
) -> dict[str, Any]:
    fields: dict[str, Any] = {"shadow": shadow.spec.name, "role": shadow.spec.role}
    outcome = shadow.outcome.get(i, "ok")
    if outcome != "ok":
        return fields | _failed_fields(outcome)
    prediction, diff, comparator = _shadow_prediction(plan, shadow, i)
    agree = i not in shadow.disagree
    return fields | {
        "shadow_outcome": "ok",
        "shadow_status": 200,
        "shadow_latency_ms": 22.0
        + (i % 13) * 1.3
        + rng.random() * 6.0
        + shadow.spec.latency_shift_ms,
        "shadow_error": None,
        "shadow_body": _answer_body(prediction, spec.body_bytes, rng),
        "shadow_body_truncated": False,
        "shadow_prediction": prediction,
        "agree": agree,
        "comparator": comparator,
        "diff_score": diff,
        "compare_detail": None if agree else f"$: {_prod_prediction(plan, i)} != {prediction}",
        "batch_size": 1,
        "batch_agree": int(agree),
    }


def _prod_prediction(plan: _RoutePlan, i: int) -> str:
    return _prediction(plan, plan.prod_class(i), plan.prod_value(i))


def _shadow_prediction(plan: _RoutePlan, shadow: _ShadowPlan, i: int) -> tuple[str, float, str]:
    """The shadow's answer for request ``i``: its JSON, diff score and comparator."""
    if plan.route.task == "regression":
        prod = plan.prod_value(i)
        if i in shadow.fixes:
            value = plan.true_value(i)
        elif i in shadow.disagree:
            value = prod + 5.0 + (i % 7)
        else:
            value = prod + 0.001 * (i % 3 - 1)
        diff = abs(value - prod) / max(abs(prod), 1.0)
        return _prediction(plan, 0, value), diff, "numeric"
    prod_class = plan.prod_class(i)
    if i in shadow.fixes:
        cls = plan.label_index(i)
    elif i in shadow.disagree:
        cls = (prod_class + 1) % len(CLASSES)
        if cls == plan.label_index(i):  # a plain disagreement must not fix a labeled row
            cls = (cls + 1) % len(CLASSES)
    else:
        cls = prod_class
    comparator = "label" if plan.route.prediction_format == "label" else "auto:label"
    return _prediction(plan, cls, 0.0), float(cls != prod_class), comparator


def _failed_fields(outcome: str) -> dict[str, Any]:
    status = 503 if outcome == "error" else None
    latency = {"error": 12.0, "timeout": 1000.0}.get(outcome)
    error = {"error": "HTTP 503", "timeout": "timeout", "dropped": "queue_full"}.get(
        outcome, "circuit_open"
    )
    return {
        "shadow_outcome": outcome,
        "shadow_status": status,
        "shadow_latency_ms": latency,
        "shadow_error": error,
        "shadow_body": b"",
        "shadow_body_truncated": False,
        "shadow_prediction": None,
        "agree": None,
        "comparator": None,
        "diff_score": None,
        "compare_detail": "no shadow answer",
        "batch_size": None,
        "batch_agree": None,
    }


# --- labels --------------------------------------------------------------------------


def _write_feedback(root: Path, spec: DatasetSpec, labels: list[tuple[str, str, datetime]]) -> None:
    rows: list[tuple[str, str, datetime]] = []
    for n, (request_id, label, ts) in enumerate(labels):
        given = ts + timedelta(hours=1)
        if spec.stale_feedback and n % 10 == 0:
            rows.append(
                (request_id, json.dumps("stale-wrong-label"), given - timedelta(minutes=30))
            )
        rows.append((request_id, label, given))
    by_day: dict[str, list[tuple[str, str, datetime]]] = {}
    for row in rows:
        by_day.setdefault(row[2].date().isoformat(), []).append(row)
    for day, day_rows in sorted(by_day.items()):
        directory = root / "feedback" / f"date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        columns = list(zip(*day_rows, strict=True))
        table = pa.table([list(c) for c in columns], schema=FEEDBACK_SCHEMA)
        pq.write_table(table, directory / "feedback-00000.parquet")


def _write_labels_csv(path: Path, labels: list[tuple[str, str, datetime]]) -> Path:
    """Labels as a person would export them: plain text, strings unquoted."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "label"])
        for request_id, label, _ts in labels:
            value = json.loads(label)
            writer.writerow([request_id, value if isinstance(value, str) else label])
    return path


def _write_temp_file(root: Path, spec: DatasetSpec) -> None:
    directory = root / "pairs" / f"route={spec.routes[0].name}" / f"date={spec.start.date()}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".part-99999.parquet.tmp").write_bytes(b"PAR1 half written")
    (directory / ".part-99998.parquet").write_bytes(b"PAR1 half written")
