"""``shadowproxy report --engine spark`` against ``--engine duckdb``: one real recording,
both engines, ``summary.json`` compared field by field.

The recording is made once for the module by ``shadowproxy serve`` (the CLI, with its
writer process) in front of real model servers on loopback, and covers every section
of the report:

- route ``clf``: a candidate shadow that disagrees with production on some requests and
  a baseline shadow (the noise floor), compared as labels; the request body's
  ``country`` to segment on; chaos on the candidate (delay, abort, corruption) and on
  production (delay); client retries that repeat an ``X-Request-Id`` (duplicate rows);
  labels posted to ``/feedback`` (some corrected by a later post) and a ``--labels``
  file that overrides some of them and adds others;
- route ``clf`` also has a ``monitor:`` block (a categorical and a numeric feature, an
  invariant that some requests break): the Drift section;
- route ``rank``: an A/B experiment with sticky assignment by user, whose outcomes are
  posted to ``/feedback`` (plus a few labels that are not outcomes, which it ignores).

Then both engines run the report through the CLI with ``--config`` (promotion
decisions, the Drift section), ``--segment`` and ``--labels``, and :func:`differences` lists every field
where their summaries differ. The Drift section is equal because both sides compute it
the same way: it reads the recording with DuckDB whichever the engine (its reservoir
sample is DuckDB's), so it is here to show that ``--engine spark`` keeps it, not that
Spark computes it. ``test_the_recording_covers_every_section`` keeps the
comparison from passing on empty sections.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.summary_diff import differences
from tests.support import free_port, route, run_cli_proxy, upstream, write_config

COUNTRIES = ("de", "de", "de", "de", "de", "fr", "fr", "fr", "us", None)
"""The request body's ``country`` by ``index % 10``: four segments, one of them missing."""
CLASSES = ("cat", "dog", "bird")
CLF_REQUESTS = 600
RETRIED = range(0, CLF_REQUESTS, 15)
"""Requests the client sends a second time with the same ``X-Request-Id``."""
FEEDBACK_LABELS = range(0, 500)
FILE_LABELS = (*range(0, 100, 4), *range(500, 560))
"""The ``--labels`` file: overrides the first, adds the second."""
RANK_USERS = 100
RANK_REQUESTS_PER_USER = 3
MASTER = "local[2]"


# --- the comparison helper can fail ---------------------------------------------------


SAMPLE = {
    "generated_at": "2026-01-01T00:00:00+00:00",
    "pairs": [
        {
            "rows": 500,
            "agreement_rate": 0.9,
            "agreement_ci95": [0.87, 0.92],
            "verdict": "same",
            "decision": {"status": "HOLD", "criteria": [{"p_value": 1e-300, "needed": None}]},
            "labels": {"duplicate_rows_folded": 3, "more_labels_needed": False},
        }
    ],
}


def _changed(path: tuple[str | int, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(SAMPLE))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("pairs", 0, "rows"), 501, "pairs/0/rows: 500 != 501"),
        (("pairs", 0, "agreement_rate"), 0.9 * (1 + 1e-8), "pairs/0/agreement_rate"),
        (("pairs", 0, "agreement_ci95"), [0.87], "pairs/0/agreement_ci95: 2 items != 1 items"),
        (("pairs", 0, "verdict"), "other", "pairs/0/verdict: 'same' != 'other'"),
        (("pairs", 0, "labels", "more_labels_needed"), True, "more_labels_needed: False != True"),
        (("pairs", 0, "labels", "duplicate_rows_folded"), 3.0, "duplicate_rows_folded: 3 != 3.0"),
        (("pairs", 0, "decision", "criteria", 0, "needed"), 0, "needed: None != 0"),
        (("pairs", 0, "decision", "criteria", 0, "p_value"), 0.0, "p_value: 1e-300 != 0.0"),
        (("pairs", 0, "rows"), True, "pairs/0/rows: 500 != True"),
        (("pairs", 0, "extra"), 1, "pairs/0/extra: only in spark's summary"),
    ],
)
def test_differences_names_every_real_difference(
    path: tuple[str | int, ...], value: Any, message: str
) -> None:
    found = differences(SAMPLE, _changed(path, value))
    assert len(found) == 1 and message in found[0], found


def test_differences_tolerates_rounding_and_the_exempt_fields_only() -> None:
    rounded = _changed(("pairs", 0, "agreement_rate"), 0.9 * (1 + 1e-12))
    rounded["generated_at"] = "2027-06-01T00:00:00+00:00"
    rounded["pairs"][0]["decision"]["criteria"][0]["p_value"] = 1e-300 * (1 - 1e-10)
    assert differences(SAMPLE, rounded) == []
    assert differences(SAMPLE, rounded, exempt={}) == [
        "generated_at: '2026-01-01T00:00:00+00:00' != '2027-06-01T00:00:00+00:00'",
    ]
    assert differences(SAMPLE, rounded | {"engine": "spark"}) == [
        "(top)/engine: only in spark's summary"
    ]
    reworded = _changed(("pairs", 0, "verdict"), "other")
    assert differences(SAMPLE, reworded, exempt={("pairs", "*", "verdict"): "why"}) == []
    assert differences(SAMPLE, reworded, exempt={("*", "*", "verdict"): "why"}) != []
    missing = json.loads(json.dumps(SAMPLE))
    del missing["pairs"][0]["labels"]
    assert differences(SAMPLE, missing) == ["pairs/0/labels: only in duckdb's summary"]


# --- the recording --------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    root: Path
    config: Path
    labels: Path


def _index(request: web.Request) -> int:
    return int(request.headers["X-Request-Id"].rsplit("-", 1)[1])


def classifier(disagree_every: int, delay_every: int = 0) -> Any:
    """Production's classes by request index; a shadow answers the next class on every
    ``disagree_every``-th request, and takes 3 ms longer on every ``delay_every``-th."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        index = _index(request)
        if delay_every and index % delay_every == 0:
            await asyncio.sleep(0.003)
        shift = 1 if disagree_every and index % disagree_every == 0 else 0
        return web.json_response({"predictions": [CLASSES[(index + shift) % 3]]})

    return handle


def arm(name: str) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response({"predictions": [name]})

    return handle


def truth(index: int) -> str:
    """The true class: production's, except on every 9th request (the next class)."""
    return CLASSES[(index + (1 if index % 9 == 0 else 0)) % 3]


def clf_body(index: int) -> bytes:
    country = COUNTRIES[index % 10]
    fields: dict[str, Any] = {"instances": [[index, index % 7]]}
    if country is not None:
        fields["country"] = country
    return json.dumps(fields).encode()


async def _send(
    session: aiohttp.ClientSession, url: str, request_id: str, body: bytes, **headers: str
) -> str:
    headers = {"X-Request-Id": request_id, "Content-Type": "application/json", **headers}
    async with session.post(url, data=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers.get("X-Experiment-Arm", "")


async def _traffic(port: int, admin: int) -> None:
    proxy = f"http://127.0.0.1:{port}"
    feedback = f"http://127.0.0.1:{admin}/feedback"
    semaphore = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session:

        async def clf(index: int) -> None:
            async with semaphore:
                await _send(
                    session, f"{proxy}/v1/models/clf:predict", f"clf-{index:05d}", clf_body(index)
                )

        async def rank(user: int, visit: int) -> tuple[int, int, str]:
            async with semaphore:
                index = user * RANK_REQUESTS_PER_USER + visit
                name = await _send(
                    session, f"{proxy}/v1/models/rank:predict", f"rank-{index:05d}", b"{}",
                    **{"X-User-Id": f"user-{user}"},
                )  # fmt: skip
                return user, index, name

        await asyncio.gather(*(clf(i) for i in range(CLF_REQUESTS)))
        # Client retries: the same request again, with the same id.
        await asyncio.gather(*(clf(i) for i in RETRIED))
        arms = await asyncio.gather(
            *(rank(u, v) for u in range(RANK_USERS) for v in range(RANK_REQUESTS_PER_USER))
        )

        wrong_first = [{"request_id": f"clf-{i:05d}", "label": "bird"} for i in range(0, 60, 5)]
        labels = [{"request_id": f"clf-{i:05d}", "label": truth(i)} for i in FEEDBACK_LABELS]
        outcomes = [
            {"request_id": f"rank-{index:05d}", "outcome": _outcome(name, index)}
            for _, index, name in arms
            if index % 6 != 5  # a sixth of the requests never report an outcome
        ]
        not_outcomes = [{"request_id": f"rank-{i:05d}", "label": "n/a"} for i in range(5, 60, 6)]
        for body in (wrong_first, labels, outcomes, not_outcomes):
            await asyncio.sleep(0.01)  # a later post is newer: it wins
            async with session.post(feedback, json=body) as response:
                assert response.status == 202, await response.text()


def _outcome(arm_name: str, index: int) -> int:
    """A conversion: every 4th request on control, every 3rd on treatment."""
    return int(index % (3 if arm_name == "treatment" else 4) == 0)


async def _record(directory: Path) -> Recording:
    chaos = [
        {"target": "shadow:candidate", "fraction": 0.1, "delay_ms": 5},
        {"target": "shadow:candidate", "fraction": 0.05, "abort_status": 503},
        {"target": "shadow:candidate", "fraction": 0.05, "corrupt_prediction": True},
        {"target": "production", "fraction": 0.05, "delay_ms": 2, "allow_production": True},
    ]
    compare = {"prediction": "kserve-v1", "kind": "label"}
    async with (
        upstream(classifier(0)) as production,
        upstream(classifier(7, delay_every=5)) as candidate,
        upstream(classifier(29)) as baseline,
        upstream(arm("rank-production")) as rank_production,
        upstream(arm("control")) as control,
        upstream(arm("treatment")) as treatment,
    ):
        shadows = [
            {"name": "candidate", "url": candidate.url, "role": "candidate"},
            {"name": "twin", "url": baseline.url, "role": "baseline"},
        ]
        clf = route("clf", production.url, shadows, compare=compare, chaos=chaos)
        clf["promotion"] = {"min_labels": 100, "disagreement": {"max_excess_over_baseline": 0.2}}
        clf["monitor"] = {
            "sample_rate": 1.0,
            "prediction": {"kind": "label"},
            "features": [
                {"name": "country", "path": "$.country", "kind": "categorical"},
                {"name": "size", "path": "$.instances[0][1]", "kind": "numeric"},
            ],
            "invariants": [
                {"name": "known", "target": "request", "path": "$.country", "in": ["de", "fr"]}
            ],
        }
        rank = route("rank", rank_production.url, mode="ab")
        rank["ab"] = {
            "arms": [
                {"name": "control", "url": control.url, "weight": 50},
                {"name": "treatment", "url": treatment.url, "weight": 50},
            ],
            "assignment_key": "header:X-User-Id",
        }
        port, admin = free_port(), free_port()
        config = write_config(
            directory, [clf, rank], listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}"
        )
        await run_cli_proxy(config, port, lambda: _traffic(port, admin))
    labels = directory / "labels.csv"
    with labels.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["request_id", "label"])
        for index in FILE_LABELS:
            writer.writerow(
                [f"clf-{index:05d}", CLASSES[(index + 2) % 3] if index < 100 else truth(index)]
            )
    return Recording(directory / "shadow-logs", config, labels)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return asyncio.run(_record(tmp_path_factory.mktemp("parity")))


LATENCY_SAMPLE = 200
"""The p99 criterion's per-request latency sample, smaller than the recording's pairs so
that the hash sample (which rows pass, and the first ``LATENCY_SAMPLE`` by hash) is what
both engines must agree on; at the default 20,000 every row would pass."""

DRIVER = f"""
import dataclasses, sys
from shadowproxy import cli, report
run = report.run_report
report.run_report = lambda options, **kw: run(
    dataclasses.replace(options, sample_size={LATENCY_SAMPLE}), **kw)
sys.exit(cli.main(sys.argv[1:]))
"""
"""``shadowproxy report`` as the CLI runs it, with the latency sample made small."""


SPARK_DEFAULTS = """
spark.driver.extraJavaOptions -XX:+UseSerialGC -XX:TieredStopAtLevel=1
spark.sql.codegen.wholeStage false
spark.sql.adaptive.coalescePartitions.enabled false
"""
"""The test's ``spark-defaults.conf``, read from ``SPARK_CONF_DIR`` as a user's would be.
A lean JVM without whole-stage code generation starts and plans faster on a thousand
rows (both only change speed). The report's local driver has one shuffle partition per
core (two here); adaptive execution is kept from merging them back into one, so every
aggregation's rows arrive from several tasks and a query that leans on an order it
does not ask for shows here."""


def report(recording: Recording, engine: str, *extra: str) -> dict[str, Any]:
    """``shadowproxy report`` as a user runs it, with every option that adds a section."""
    out = recording.root.parent / f"summary-{engine}.json"
    conf = recording.root.parent / "spark-conf"
    conf.mkdir(exist_ok=True)
    (conf / "spark-defaults.conf").write_text(SPARK_DEFAULTS)
    environment = {k: v for k, v in os.environ.items() if k != "SPARK_REMOTE"}
    environment["SPARK_CONF_DIR"] = str(conf)
    command = [
        sys.executable, "-c", DRIVER, "report", str(recording.root),
        "--engine", engine, *extra,
        "--config", str(recording.config), "--labels", str(recording.labels),
        "--segment", "$.country", "--json", str(out),
    ]  # fmt: skip
    # Run from the recording's directory and check it: Spark creates an empty
    # spark-warehouse/ in the working directory unless told otherwise, and the engine
    # points a driver it starts at a temporary directory of its own instead, which is
    # removed afterwards. A regression shows here, not as litter in the checkout.
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=280, cwd=conf.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (conf.parent / "spark-warehouse").exists()
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def duckdb_summary(recording: Recording) -> dict[str, Any]:
    return report(recording, "duckdb")


@pytest.fixture(scope="module")
def spark_summary(recording: Recording) -> dict[str, Any]:
    if shutil.which("java") is None:
        pytest.skip("no JDK: java is not on PATH (apt-get install default-jdk-headless)")
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install '.[spark]')")
    return report(recording, "spark", "--spark-master", MASTER)


# --- the recording covers every section -----------------------------------------------


def _pairs(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{p['route']}/{p['shadow']}": p for p in summary["pairs"]}


@pytest.mark.timeout(90)  # the recording: a proxy, its writer and six model servers
def test_the_recording_covers_every_section(duckdb_summary: dict[str, Any]) -> None:
    pairs = _pairs(duckdb_summary)
    assert set(pairs) == {"clf/candidate", "clf/twin"}
    candidate, twin = pairs["clf/candidate"], pairs["clf/twin"]
    assert (candidate["role"], twin["role"]) == ("candidate", "baseline")
    # Disagreements on both shadows, the candidate's more often.
    assert 0 < twin["compared"] - twin["agreed"] < candidate["compared"] - candidate["agreed"]
    assert candidate["noise_floor"]["baselines"] == ["twin"]
    assert candidate["prod_latency_ms"]["p99"] is not None
    latency = candidate["latency_test"]
    assert latency["p_value"] is not None and latency["pairs"] > latency["sample"] == LATENCY_SAMPLE
    # Labels from /feedback and the file; retried requests folded.
    labels = candidate["labels"]
    assert labels["task"] == "classification"
    assert labels["n"] > 400
    assert labels["duplicate_rows_folded"] > 0
    assert labels["test"]["p_value"] is not None
    # Segments: three countries and the requests without one.
    values = {s["value"] for s in candidate["segments"]}
    assert values == {"de", "fr", "us", "(missing)"}, values
    # Chaos: each fault on the candidate, and production's delay.
    assert candidate["chaos_excluded"] > 0
    faults = {(c["target"], c["fault"]) for c in duckdb_summary["chaos"]}
    assert faults == {
        ("candidate", "delay"),
        ("candidate", "abort"),
        ("candidate", "corrupt"),
        ("production", "delay"),
    }
    # The experiment: two arms with outcomes, units, a test, the SRM check.
    [experiment] = duckdb_summary["experiments"]
    assert experiment["route"] == "rank" and experiment["design"] == "ab"
    assert [a["name"] for a in experiment["arms"]] == ["control", "treatment"]
    assert all(a["with_outcome"] > 0 for a in experiment["arms"])
    assert experiment["test"]["p_value"] is not None
    assert experiment["srm"]["p_value"] is not None
    assert experiment["ignored_feedback"] > 0
    # --config: the route's monitor block gives the Drift section (read with DuckDB on
    # either engine, so the comparison below shows Spark runs keep it, not recompute it).
    drift = duckdb_summary["drift"]["clf"]
    assert [f["name"] for f in drift["features"]] == ["country", "size"]
    assert drift["prediction"]["test"]["p_value"] is not None
    assert drift["invariants"][0]["count"] > 0
    # --config: the candidate is decided on its route's criteria.
    assert candidate["decision"]["status"] in {"PROMOTE", "HOLD", "REJECT"}
    assert len(candidate["decision"]["criteria"]) == 4


@pytest.mark.timeout(300)  # a JVM starts and plans two dozen queries
def test_spark_gives_the_same_summary_as_duckdb(
    duckdb_summary: dict[str, Any], spark_summary: dict[str, Any]
) -> None:
    found = differences(duckdb_summary, spark_summary)
    assert found == [], "\n".join(found)
