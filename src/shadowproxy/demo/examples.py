"""Two small example model servers behind the proxy, for ``make serve``.

Both speak the KServe v1 protocol (``POST /v1/models/<name>:predict`` with
``{"instances": [[...], ...]}`` -> ``{"predictions": [...]}``) and price a house
from its features with a linear model; the candidate's weights differ a little, so its
answers differ from production's on some requests.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import orjson
from aiohttp import web

from shadowproxy.app import serve
from shadowproxy.config import load_config
from shadowproxy.loop import run_loop

log = logging.getLogger("shadowproxy.demo.examples")

PRODUCTION_WEIGHTS = (50_000.0, 120.0, -1_500.0)
CANDIDATE_WEIGHTS = (52_000.0, 118.0, -1_400.0)


def price(weights: tuple[float, ...], features: list[Any]) -> float:
    """Rooms, square metres, age in years -> price; missing features count as 0."""
    values = [float(x) for x in features[: len(weights)]]
    return round(sum(w * x for w, x in zip(weights, values, strict=False)) + 20_000.0, 2)


def model_app(name: str, weights: tuple[float, ...]) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
            instances = payload["instances"]
            predictions = [price(weights, list(row)) for row in instances]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        body = {"predictions": predictions, "model_name": name}
        if request.headers.get("X-Shadow-Request") == "true":
            log.info(
                "%s got a shadow copy of request %s: %s",
                name,
                request.headers.get("X-Request-Id"),
                predictions,
            )
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "ready": True})

    app = web.Application()
    app.router.add_post("/v1/models/house-price:predict", predict)
    app.router.add_get("/v1/models/house-price", ready)
    return app


async def _start(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def main(config_path: str) -> None:
    config = load_config(config_path)
    models = [
        await _start(model_app("house-price-v1", PRODUCTION_WEIGHTS), 8001),
        await _start(model_app("house-price-v2", CANDIDATE_WEIGHTS), 8002),
    ]
    print("example models: production http://127.0.0.1:8001, candidate http://127.0.0.1:8002")

    async def announce(server: Any) -> None:
        host, port = server.proxy_address
        admin_host, admin_port = server.admin_address
        print(
            "\nshadowproxy is up. Try:\n"
            f"  curl -s -X POST http://{host}:{port}/v1/models/house-price:predict \\\n"
            "       -H 'Content-Type: application/json' -d '{\"instances\": [[3, 120, 10]]}'\n"
            f"  curl -s http://{admin_host}:{admin_port}/metrics | grep shadowproxy_shadow\n"
            f"  curl -s http://{admin_host}:{admin_port}/routes\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )

    try:
        await serve(config, on_ready=announce)
    finally:
        for runner in models:
            await runner.cleanup()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="config/shadowproxy.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_loop(main(args.config))


if __name__ == "__main__":
    cli()
