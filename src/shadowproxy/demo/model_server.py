"""A real model server for the demo, speaking the KServe v1 protocol.

``POST /v1/models/<name>:predict`` with ``{"instances": [[...], ...]}`` answers
``{"predictions": [...]}``. One process per model, as in a real deployment.
``--version`` adds ``model_version`` to every answer (as Open Inference servers do);
``--next-model`` and ``--next-version`` stage a release that ``POST /admin/deploy``
swaps in, as a rolling deployment would behind the same address (the ``drift``
scenario).
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


def build_app(
    model: Any,
    name: str,
    error_rate: float = 0.0,
    seed: int = 0,
    version: str | None = None,
    release: tuple[Any, str] | None = None,
) -> web.Application:
    failures = random.Random(seed)
    serving: dict[str, Any] = {"model": model, "version": version}

    async def predict(request: web.Request) -> web.Response:
        if error_rate and failures.random() < error_rate:
            return web.json_response({"error": "internal error (--error-rate)"}, status=500)
        try:
            instances = orjson.loads(await request.read())["instances"]
            predictions = [int(label) for label in serving["model"].predict(instances)]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        body: dict[str, Any] = {"predictions": predictions, "model_name": name}
        if serving["version"] is not None:
            body["model_version"] = serving["version"]
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def deploy(request: web.Request) -> web.Response:
        if release is None:
            return web.json_response({"error": "no --next-model staged"}, status=409)
        serving["model"], serving["version"] = release
        return web.json_response({"deployed": release[1]})

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "ready": True})

    app = web.Application()
    app.router.add_post("/v1/models/digits:predict", predict)
    app.router.add_get("/v1/models/digits", metadata)
    app.router.add_post("/admin/deploy", deploy)
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
    parser.add_argument("--version", help="model_version to put in every answer")
    parser.add_argument("--next-model", type=Path, help="the model POST /admin/deploy swaps in")
    parser.add_argument("--next-version", help="its model_version")
    args = parser.parse_args()
    if not 0.0 <= args.error_rate <= 1.0:
        parser.error(f"--error-rate must be between 0 and 1, got {args.error_rate:g}")
    model = pickle.loads(args.model.read_bytes())
    release = None
    if args.next_model is not None:
        release = (pickle.loads(args.next_model.read_bytes()), args.next_version or "next")
    app = build_app(model, args.name, args.error_rate, args.seed, args.version, release)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
