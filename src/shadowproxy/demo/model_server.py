"""A real model server for the demo, speaking the KServe v1 protocol.

``POST /v1/models/<name>:predict`` with ``{"instances": [[...], ...]}`` answers
``{"predictions": [...]}``. One process per model, as in a real deployment.
``--error-rate`` makes it a broken deployment: that share of requests, drawn from a
seeded generator, gets a 500 instead of an answer (the ``canary-bad`` scenario).
"""

from __future__ import annotations

import argparse
import pickle
import random
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web


def build_app(model: Any, name: str, error_rate: float = 0.0, seed: int = 0) -> web.Application:
    failures = random.Random(seed)

    async def predict(request: web.Request) -> web.Response:
        if error_rate and failures.random() < error_rate:
            return web.json_response({"error": "internal error (--error-rate)"}, status=500)
        try:
            instances = orjson.loads(await request.read())["instances"]
            predictions = [int(label) for label in model.predict(instances)]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        body = {"predictions": predictions, "model_name": name}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "ready": True})

    app = web.Application()
    app.router.add_post("/v1/models/digits:predict", predict)
    app.router.add_get("/v1/models/digits", metadata)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of requests answered with a 500"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --error-rate draws")
    args = parser.parse_args()
    if not 0.0 <= args.error_rate <= 1.0:
        parser.error(f"--error-rate must be between 0 and 1, got {args.error_rate:g}")
    model = pickle.loads(args.model.read_bytes())
    app = build_app(model, args.name, args.error_rate, args.seed)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
