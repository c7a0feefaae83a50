"""Prometheus reads what shadowproxy exposes: promtool on a live scrape and on the alerts.

The scrape comes from a real ``shadowproxy serve`` (one process, and ``--workers 2``
behind the supervisor) after traffic that was shadowed, compared and recorded, so the
writer process's metrics are in it. The alert rules shipped in ``config/prometheus``
are evaluated by ``promtool test rules`` on series named and labelled by the metrics
module itself: a renamed metric or label makes an alert silent, and this test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter as Tally
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.metrics import Metrics
from tests.support import free_port, route, upstream, wait_listening, write_config

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "shadowproxy-rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
REQUESTS = 20


def repeated(exposition: str) -> list[str]:
    """Families and series that appear more than once in an exposition."""
    # The comment lines are counted as written: the parser joins adjacent repeats.
    comments = Tally(
        tuple(line.split()[1:3]) for line in exposition.splitlines() if line.startswith("# ")
    )
    series = Tally(
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    )
    return [f"{kind} {name}" for (kind, name), n in comments.items() if n > 1] + [
        f"series {name}{dict(labels)}" for (name, labels), n in series.items() if n > 1
    ]


def values(exposition: str, name: str) -> list[float]:
    return [
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    ]


def test_repeated_finds_a_family_written_twice() -> None:
    once = "# HELP g A flag.\n# TYPE g gauge\ng 1.0\n"
    assert repeated(once) == []
    assert repeated(once + once.replace("1.0", "0.0")) == ["HELP g", "TYPE g", "series g{}"]


@contextlib.asynccontextmanager
async def serving(config: Path, workers: int, log: Path) -> AsyncIterator[None]:
    """``shadowproxy serve`` as users start it; SIGTERM and a clean exit at the end."""
    extra = ["--workers", str(workers)] if workers > 1 else []
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "serve", "--config", str(config), *extra,
            stdout=out, stderr=out,
        )  # fmt: skip
        try:
            yield
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    if code != 0:
        output = await asyncio.to_thread(log.read_text)
        raise AssertionError(f"shadowproxy serve exited with {code}:\n{output}")


async def wait_ready(session: aiohttp.ClientSession, admin: str) -> None:
    for _ in range(300):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{admin}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError("shadowproxy never became ready")


async def scrape_after_traffic(tmp_path: Path, workers: int) -> str:
    """/metrics once every request was shadowed, compared and written to Parquet."""
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    async with upstream() as production, upstream() as shadow:
        config = write_config(
            tmp_path,
            [route("m", production.url, [{"name": "s", "url": shadow.url}])],
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin_port}",
            recording={"dir": str(tmp_path / "shadow-logs"), "flush_interval_s": 0.2},
        )
        async with serving(config, workers, tmp_path / "serve.log"):
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, admin)
                await wait_listening(port)
                for index in range(REQUESTS):
                    url = f"http://127.0.0.1:{port}/v1/models/m:predict"
                    async with session.post(url, data=b'{"instances": [%d]}' % index) as answer:
                        assert answer.status == 200
                        await answer.read()
                for _ in range(200):
                    async with session.get(f"{admin}/metrics") as response:
                        text = await response.text()
                    written = values(text, "shadowproxy_records_written_total")
                    if sum(written) >= REQUESTS:
                        return text
                    await asyncio.sleep(0.1)
    raise AssertionError(f"the pairs were never recorded; last scrape:\n{text}")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2], ids=["single-process", "two-workers"])
async def test_live_metrics_pass_promtool(tmp_path: Path, workers: int) -> None:
    text = await scrape_after_traffic(tmp_path, workers)
    assert sum(values(text, "shadowproxy_comparisons_total")) == REQUESTS
    assert repeated(text) == []
    # One answer, and the true one: a scraper keeping the last of two would alert.
    assert values(text, "shadowproxy_config_last_reload_successful") == [1.0]
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    checked = await asyncio.create_subprocess_exec(
        PROMTOOL, "check", "metrics",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    said, _ = await checked.communicate(text.encode())
    assert checked.returncode == 0, said.decode()


# --- the shipped alert rules, evaluated by promtool -----------------------------------

SCRAPE_LABELS = {"instance": "proxy-0:9090", "job": "shadowproxy"}
ROUTE, SHADOW, OTHER = "house-price", "candidate-v2", "candidate-v3"


def series(metric: Any, **labels: str) -> str:
    """The series ``metric`` exposes with ``labels``, as Prometheus stores it once scraped.

    Asked of the metric object, so a renamed metric or label changes what the rules
    are tested against (and a label the metric lacks raises here)."""
    if labels:
        metric.labels(**labels)
    (family,) = metric.collect()
    (name,) = {sample.name for sample in family.samples if sample.labels == labels}
    text = ",".join(f'{key}="{value}"' for key, value in {**labels, **SCRAPE_LABELS}.items())
    return f"{name}{{{text}}}"


def incident(m: Metrics) -> dict[str, str]:
    """Series for every alert's trouble, one value a minute (promtool's notation)."""
    pair = {"route": ROUTE, "shadow": SHADOW}
    other = {"route": ROUTE, "shadow": OTHER}
    return {
        series(m.shadow_requests, **pair, outcome="ok"): "0+80x40",
        series(m.shadow_requests, **pair, outcome="error"): "0+20x40",
        series(m.comparisons, **pair, result="agree"): "0+50x40",
        series(m.comparisons, **pair, result="disagree"): "0+50x40",
        series(m.comparisons, **other, result="agree"): "0+50x40",
        series(m.comparisons, **other, result="incomparable"): "0+50x40",
        series(m.records_dropped, reason="queue_full"): "0+3x40",
        series(m.records_dropped, reason="shutdown"): "0x40",
        series(m.recorder_degraded): "1x40",
        series(m.shadow_circuit_open, **pair): "1x40",
        series(m.shadow_circuit_open, **other): "0x40",
        series(m.requests, route=ROUTE, code="200", grpc_status=""): "0+90x40",
        series(m.requests, route=ROUTE, code="502", grpc_status=""): "0+10x40",
        series(m.config_last_reload_successful): "1 1 0x38",
    }


def healthy(m: Metrics) -> dict[str, str]:
    """The same proxy with nothing wrong: no alert may fire."""
    pair = {"route": ROUTE, "shadow": SHADOW}
    return {
        series(m.shadow_requests, **pair, outcome="ok"): "0+100x40",
        series(m.shadow_requests, **pair, outcome="error"): "0x40",
        series(m.comparisons, **pair, result="agree"): "0+99x40",
        series(m.comparisons, **pair, result="disagree"): "0+1x40",
        series(m.comparisons, **pair, result="incomparable"): "0+1x40",
        series(m.records_dropped, reason="queue_full"): "0x40",
        series(m.recorder_degraded): "0x40",
        series(m.shadow_circuit_open, **pair): "0x40",
        series(m.requests, route=ROUTE, code="200", grpc_status=""): "0+100x40",
        series(m.requests, route=ROUTE, code="502", grpc_status=""): "0x40",
        series(m.config_last_reload_successful): "1x40",
    }


def expected_alerts() -> dict[str, list[dict[str, Any]]]:
    instance = SCRAPE_LABELS["instance"]
    return {
        "ShadowproxyShadowErrorRateHigh": [
            {
                "exp_labels": {"severity": "warning", "route": ROUTE, "shadow": SHADOW},
                "exp_annotations": {"summary": f"Shadow {SHADOW} on {ROUTE}: 20% of copies fail"},
            }
        ],
        "ShadowproxyAgreementLow": [
            {
                "exp_labels": {"severity": "warning", "route": ROUTE, "shadow": SHADOW},
                "exp_annotations": {
                    "summary": f"Shadow {SHADOW} agrees with production on only 50% on {ROUTE}"
                },
            }
        ],
        "ShadowproxyIncomparableHigh": [
            {
                "exp_labels": {"severity": "info", "route": ROUTE, "shadow": OTHER},
                "exp_annotations": {
                    "summary": f"50% of pairs on {ROUTE}/{OTHER} cannot be compared"
                },
            }
        ],
        "ShadowproxyRecordsDropped": [
            {
                "exp_labels": {"severity": "warning", "reason": "queue_full"},
                "exp_annotations": {
                    "summary": "shadowproxy dropped 15 records (queue_full) in 5 minutes"
                },
            }
        ],
        "ShadowproxyRecorderDegraded": [
            {
                "exp_labels": {"severity": "critical", "instance": instance},
                "exp_annotations": {
                    "summary": f"shadowproxy on {instance} cannot write recordings"
                },
            }
        ],
        "ShadowproxyShadowCircuitOpen": [
            {
                "exp_labels": {"severity": "warning", "route": ROUTE, "shadow": SHADOW},
                "exp_annotations": {
                    "summary": f"Shadow {SHADOW} on {ROUTE} has been unreachable for 10 minutes"
                },
            }
        ],
        "ShadowproxyProductionErrors": [
            {
                "exp_labels": {"severity": "critical", "route": ROUTE},
                "exp_annotations": {"summary": f"10% of {ROUTE} requests fail to reach production"},
            }
        ],
        "ShadowproxyConfigReloadFailed": [
            {
                "exp_labels": {"severity": "warning", "instance": instance},
                "exp_annotations": {
                    "summary": f"shadowproxy on {instance} refused its config files"
                },
            }
        ],
    }


def rule_test(inputs: dict[str, str], alerts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in inputs.items()],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": name, "exp_alerts": expected}
            for name, expected in alerts.items()
        ],
    }


def with_descriptions(alerts: dict[str, list[dict[str, Any]]]) -> None:
    """promtool compares every annotation: the descriptions come from the rules file."""
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    descriptions = {rule["alert"]: rule["annotations"]["description"] for rule in rules}
    for name, expected in alerts.items():
        for alert in expected:
            alert["exp_annotations"]["description"] = descriptions[name]


@needs_promtool
def test_alert_rules_fire_on_the_series_the_proxy_exposes(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    alerts = expected_alerts()
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert sorted(alerts) == sorted(rule["alert"] for rule in rules), "an alert is untested"
    with_descriptions(alerts)
    quiet: dict[str, list[dict[str, Any]]] = {name: [] for name in alerts}
    spec = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [rule_test(incident(metrics), alerts), rule_test(healthy(metrics), quiet)],
    }
    path = tmp_path / "shadowproxy-rules.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
