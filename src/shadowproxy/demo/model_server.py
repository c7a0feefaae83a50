"""A real model server for the demo, speaking the KServe v1 protocol.

``POST /v1/models/<name>:predict`` with ``{"instances": [[...], ...]}`` answers
``{"predictions": [...]}``. One process per model, as in a real deployment.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web


def build_app(model: Any, name: str) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
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
    args = parser.parse_args()
    model = pickle.loads(args.model.read_bytes())
    web.run_app(
        build_app(model, args.name), host="127.0.0.1", port=args.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
