"""The shipped examples judge predictions: what a newcomer runs first must not report
disagreement where the models agree.

Every route example in ``config/`` (the route files ``make serve`` loads and the
Kubernetes ConfigMap) says how to compare answers, and with the example model servers
of ``make serve`` behind the proxy, identical prices are judged as agreeing although
the two servers name themselves differently in every answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from shadowproxy.compare import Comparer
from shadowproxy.config import RouteConfig, load_config, with_overrides
from shadowproxy.demo.examples import CANDIDATE_WEIGHTS, PRODUCTION_WEIGHTS, model_app
from tests.support import running_proxy

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "config" / "shadowproxy.yaml"
KUBE = ROOT / "config" / "kubernetes" / "shadowproxy-sidecar.yaml"
REQUEST = b'{"instances": [[3, 120, 10], [2, 80, 30]]}'
"""The README's request, with a second house: a batch of two."""


def config_maps() -> list[dict[str, str]]:
    return [
        doc["data"] for doc in yaml.safe_load_all(KUBE.read_text()) if doc["kind"] == "ConfigMap"
    ]


def shipped_route_documents() -> dict[str, dict[str, Any]]:
    """Every route example the repository ships, by where it is."""
    documents = {
        str(path.relative_to(ROOT)): yaml.safe_load(path.read_text())
        for path in sorted((ROOT / "config" / "routes").glob("*.yaml"))
    }
    for data in config_maps():
        for key, text in data.items():
            document = yaml.safe_load(text)
            if "match" in document:
                documents[f"{KUBE.relative_to(ROOT)}: {key}"] = document
    return documents


def shipped_routes(tmp_path: Path, environ: dict[str, str]) -> list[RouteConfig]:
    """The shipped routes as ``serve`` loads them (the ConfigMap laid out as mounted)."""
    routes = list(load_config(MAIN, environ=environ).routes)
    for index, data in enumerate(config_maps()):
        mounted = tmp_path / f"configmap-{index}"
        (mounted / "routes").mkdir(parents=True)
        for key, text in data.items():
            target = mounted / key if key == "shadowproxy.yaml" else mounted / "routes" / key
            target.write_text(text)
        routes += load_config(mounted / "shadowproxy.yaml", environ=environ).routes
    return routes


def test_every_shipped_route_says_how_to_judge_answers() -> None:
    documents = shipped_route_documents()
    assert len(documents) >= 2, documents
    unjudged = [where for where, document in documents.items() if "compare" not in document]
    assert not unjudged, f"these compare whole bodies (model names, ids): {unjudged}"


@contextlib.asynccontextmanager
async def example_server(name: str, weights: tuple[float, ...]) -> AsyncIterator[str]:
    """One of ``make serve``'s example model servers, on a free loopback port."""
    runner = web.AppRunner(model_app(name, weights), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def judged(tmp_path: Path, shadow_weights: tuple[float, ...]) -> list[Any]:
    """One request through the shipped config; the pair judged by every shipped route."""
    async with (
        example_server("house-price-v1", PRODUCTION_WEIGHTS) as production,
        example_server("house-price-v2", shadow_weights) as shadow,
    ):
        environ = {"PRODUCTION_URL": production, "CANDIDATE_URL": shadow}
        config = load_config(MAIN, environ=environ)
        config = with_overrides(config, listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
        async with running_proxy(config) as proxy, aiohttp.ClientSession() as client:
            url = proxy.url + "/v1/models/house-price:predict"
            async with client.post(url, data=REQUEST) as response:
                assert response.status == 200, await response.text()
            (pair,) = await proxy.sink.wait_for(1)
    routes = shipped_routes(tmp_path, environ)
    return [Comparer([route])(pair) for route in routes]


async def test_identical_predictions_from_the_example_servers_agree(tmp_path: Path) -> None:
    verdicts = await judged(tmp_path, PRODUCTION_WEIGHTS)
    assert len(verdicts) >= 2
    for verdict in verdicts:
        assert (verdict.agree, verdict.diff_score, verdict.batch_size) == (True, 0.0, 2), verdict


async def test_the_example_candidate_is_judged_on_its_prices(tmp_path: Path) -> None:
    verdicts = await judged(tmp_path, CANDIDATE_WEIGHTS)
    for verdict in verdicts:
        assert verdict.agree is False, verdict
        assert verdict.comparator == "numeric" and verdict.diff_score > 0.01, verdict
