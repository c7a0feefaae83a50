"""A test upstream, written for this tier: an OpenAI-compatible API plus a KServe v1 echo.

No OpenAI-compatible server on the package index runs on a CPU without downloading a
model, so the openai SDK and the plain HTTP clients meet this one instead. It answers
as the OpenAI API does (chat and completions, plain and streamed as server-sent events;
embeddings as float lists or base64 of little-endian float32), deterministically from
the input, so production and a shadow started from the same file agree. ``--perturb``
moves each embedding a little (cosine similarity stays near 1), as a retrained model
would. Every answer carries ``X-Upstream-Name`` so a test can tell who answered.

Run as a process: ``python tests/interop/upstream.py --port N --name prod``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import struct
import time
from typing import Any

from aiohttp import web

WORDS = [
    "the",
    "model",
    "answers",
    "every",
    "prompt",
    "with",
    "the",
    "same",
    "few",
    "words",
    "in",
    "a",
    "stable",
    "order",
]
DIMENSIONS = 16
STREAM_GAP_S = 0.002
"""Pause between streamed pieces, so a stream is several TCP writes as with a real model."""


def answer_words(prompt: str, count: int = 12) -> list[str]:
    """The same prompt always gets the same words."""
    seed = hashlib.sha256(prompt.encode()).digest()
    return [WORDS[seed[i] % len(WORDS)] for i in range(count)]


def embedding(text: str, perturb: float) -> list[float]:
    """A unit vector from the text's hash; ``perturb`` nudges every component."""
    seed = hashlib.sha256(text.encode()).digest()
    vector = [(b - 127.5) / 127.5 + perturb * (-1) ** i for i, b in enumerate(seed[:DIMENSIONS])]
    norm = math.sqrt(sum(x * x for x in vector))
    # Rounded to float32 so the float and the base64 encodings carry the same numbers.
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in vector]


def _prompt(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def _usage(prompt: str, words: list[str]) -> dict[str, int]:
    prompt_tokens = len(prompt.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(words),
        "total_tokens": prompt_tokens + len(words),
    }


class Upstream:
    def __init__(self, name: str, perturb: float) -> None:
        self.name = name
        self.perturb = perturb
        self.counter = 0

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.name}-{self.counter}"

    def _json(self, body: dict[str, Any]) -> web.Response:
        return web.json_response(body, headers={"X-Upstream-Name": self.name})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        words = answer_words(_prompt(body))
        if body.get("stream"):
            pieces = [{"role": "assistant", "content": ""}] + [
                {"content": w if i == 0 else " " + w} for i, w in enumerate(words)
            ]
            return await self._stream(request, body, "chat.completion.chunk", pieces)
        message = {"role": "assistant", "content": " ".join(words)}
        return self._json(
            {
                "id": self._id("chatcmpl"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": _usage(_prompt(body), words),
            }
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        words = answer_words(_prompt(body))
        if body.get("stream"):
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            return await self._stream(request, body, "text_completion", pieces)
        return self._json(
            {
                "id": self._id("cmpl"),
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [
                    {"index": 0, "text": " ".join(words), "finish_reason": "stop", "logprobs": None}
                ],
                "usage": _usage(_prompt(body), words),
            }
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], kind: str, pieces: list[Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Upstream-Name": self.name}
        )
        await response.prepare(request)
        chunk_id, created = self._id("chunk"), int(time.time())
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
            if kind == "chat.completion.chunk":
                choice["delta"] = piece
            else:
                choice["text"] = piece
            event = {
                "id": chunk_id,
                "object": kind,
                "created": created,
                "model": body.get("model", "test"),
                "choices": [choice],
            }
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(STREAM_GAP_S)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        encoding = body.get("encoding_format", "float")
        data = []
        for i, text in enumerate(inputs):
            vector = embedding(str(text), self.perturb)
            value: Any = vector
            if encoding == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return self._json(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "test"),
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )

    async def echo(self, request: web.Request) -> web.Response:
        """KServe v1, any model name: one prediction per instance (the sum of its numbers), and the
        request's header names, so a test sees what reached the upstream."""
        body = await request.json()
        predictions = [sum(instance) for instance in body["instances"]]
        return self._json(
            {
                "predictions": predictions,
                "received_headers": sorted({name.lower() for name in request.headers}),
                "received_bytes": request.content_length,
            }
        )


def app(name: str, perturb: float) -> web.Application:
    upstream = Upstream(name, perturb)
    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.router.add_post("/v1/chat/completions", upstream.chat)
    application.router.add_post("/v1/completions", upstream.completions)
    application.router.add_post("/v1/embeddings", upstream.embeddings)
    application.router.add_post("/v1/models/{model:[^/:]+}:predict", upstream.echo)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--perturb", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(
        app(args.name, args.perturb),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
