"""The deployment kit: its files are checked as far as this machine allows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from shadowproxy.config import load_config
from tests.support import route, running_proxy, upstream, write_config

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "config" / "kubernetes" / "shadowproxy-sidecar.yaml"
RULES = ROOT / "config" / "prometheus" / "shadowproxy-rules.yml"
DASHBOARD = ROOT / "config" / "grafana" / "shadowproxy.json"
METRIC = re.compile(r"\bshadowproxy_[a-z_]+")


def kube_documents() -> dict[str, dict]:  # type: ignore[type-arg]
    return {doc["kind"]: doc for doc in yaml.safe_load_all(KUBE.read_text())}


def test_kubernetes_configmap_holds_a_valid_config(tmp_path: Path) -> None:
    docs = kube_documents()
    deployment = docs["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in deployment["volumes"] if v["name"] == "config")
    for item in volume["configMap"]["items"]:
        target = tmp_path / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(docs["ConfigMap"]["data"][item["key"]])
    config = load_config(
        tmp_path / "shadowproxy.yaml", environ={"CANDIDATE_URL": "http://candidate:8001"}
    )
    assert [r.name for r in config.routes] == ["house-price"]
    proxy = next(c for c in deployment["containers"] if c["name"] == "shadowproxy")
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert config.main.listen.endswith(f":{ports['http']}")
    assert config.main.admin_listen == f"0.0.0.0:{ports['admin']}"
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert "/etc/shadowproxy/shadowproxy.yaml" in proxy["args"]
    annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["admin"])
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM python:3\.11-slim", text, re.M)) == 2
    assert re.search(r"^USER 10001$", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "/etc/shadowproxy/shadowproxy.yaml" in text


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert {
        "ShadowproxyShadowErrorRateHigh",
        "ShadowproxyAgreementLow",
        "ShadowproxyRecordsDropped",
        "ShadowproxyRecorderDegraded",
    } <= names
    k8s_job = yaml.safe_load((RULES.parent / "kubernetes-scrape.yml").read_text())
    assert k8s_job["scrape_configs"][0]["kubernetes_sd_configs"] == [{"role": "pod"}]
    for rule in rules:
        assert rule["expr"] and rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_scrape_config() -> None:
    subprocess.run(["promtool", "check", "rules", str(RULES)], check=True)
    # The monitor's alerts fire on the synthetic traffic they are for, and only there.
    subprocess.run(
        ["promtool", "test", "rules", str(RULES.with_name("shadowproxy-rules.test.yml"))],
        check=True,
    )
    subprocess.run(
        ["promtool", "check", "config", str(RULES.parent / "prometheus.yml")], check=True
    )


def queried_metrics() -> set[str]:
    texts = [RULES.read_text()]
    dashboard = json.loads(DASHBOARD.read_text())
    texts += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    texts += [note["expr"] for note in dashboard.get("annotations", {}).get("list", [])]
    texts.append(json.dumps(dashboard["templating"]))
    return {name for text in texts for name in METRIC.findall(text)}


async def test_every_queried_metric_exists_in_a_live_scrape(tmp_path: Path) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"predictions": [1.0]})

    async with upstream(answer) as prod, upstream(answer) as shadow:
        config = write_config(tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            async with aiohttp.ClientSession() as client:
                async with client.post(proxy.url + "/v1/models/m:predict", data=b"{}") as resp:
                    assert resp.status == 200
                await proxy.sink.wait_for(1)
                async with client.get(proxy.admin_url + "/metrics") as resp:
                    scrape = await resp.text()
    families = set(re.findall(r"^# TYPE (\S+) ", scrape, re.M))
    samples = set(re.findall(r"^(shadowproxy_[a-z_]+)", scrape, re.M))
    suffixes = ("_total", "_bucket", "_sum", "_count")
    known = families | samples | {name + suffix for name in families for suffix in suffixes}
    missing = sorted(queried_metrics() - known)
    assert not missing, f"queried but not exported: {missing}"
    assert len(queried_metrics()) >= 10
