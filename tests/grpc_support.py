"""Real gRPC peers on loopback: MLServer processes and small scripted grpc.aio servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.support import free_port

INFER = "/inference.GRPCInferenceService/ModelInfer"

Behaviour = Callable[[bytes, Any], Awaitable[bytes]]


@dataclass
class FakeUpstream:
    """A grpc.aio server answering every method with ``behaviour``; it remembers the
    calls it got and the ones cancelled under it."""

    url: str = ""
    calls: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)
    cancelled: int = 0


@contextlib.asynccontextmanager
async def fake_upstream(behaviour: Behaviour) -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream()

    class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            method = details.method

            async def unary(request: bytes, context: Any) -> bytes:
                upstream.calls.append((method, request, dict(context.invocation_metadata())))
                try:
                    return await behaviour(request, context)
                except asyncio.CancelledError:
                    upstream.cancelled += 1
                    raise

            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    upstream.url = f"grpc://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        await server.stop(0)


def write_iris_models(directory: Path) -> dict[str, Any]:
    """Two different scikit-learn models of the iris data, saved for MLServer."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    features, labels = load_iris(return_X_y=True)
    models = {
        "production": LogisticRegression(max_iter=1000).fit(features, labels),
        "shadow": DecisionTreeClassifier(max_depth=2, random_state=0).fit(features, labels),
    }
    for name, model in models.items():
        folder = directory / name
        folder.mkdir(parents=True)
        joblib.dump(model, folder / "model.joblib")
        settings = {
            "name": "iris",
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "v1"},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
    return {"features": features, "labels": labels, **models}


@contextlib.contextmanager
def mlservers(directory: Path, names: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """One ``mlserver start`` per model folder, gRPC on a free port: ``{name: host:port}``."""
    processes: list[subprocess.Popen[bytes]] = []
    addresses: dict[str, str] = {}
    try:
        for name in names:
            folder = directory / name
            port = free_port()
            settings = {
                "host": "127.0.0.1",
                "grpc_port": port,
                "http_port": free_port(),
                "metrics_port": free_port(),
                "metrics_endpoint": None,
                "parallel_workers": 0,
            }
            (folder / "settings.json").write_text(json.dumps(settings))
            command = [sys.executable, "-m", "mlserver.cli.main", "start", str(folder)]
            with (directory / f"{name}.log").open("wb") as log:
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=folder
                )
            processes.append(process)
            addresses[name] = f"127.0.0.1:{port}"
        for name, address in addresses.items():
            _wait_ready(address, directory / f"{name}.log")
        yield addresses
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(address: str, log: Path, within_s: float = 90.0) -> None:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(address)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready("iris"):
                client.close()
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"MLServer on {address} not ready:\n{log.read_text()[-3000:]}")


@contextlib.asynccontextmanager
async def stream_upstream() -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A grpc.aio server answering every method as a stream: ``re:<message>`` for each
    message. Yields its URL, the messages it got, and a one-item count of streams that
    ended (whether the client half-closed or the call was cut)."""
    seen: list[bytes] = []
    ended = [0]

    class Echoes(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            async def each(requests: Any, context: Any) -> Any:
                try:
                    async for message in requests:
                        seen.append(message)
                        yield b"re:" + message
                finally:
                    ended[0] += 1

            return grpc.stream_stream_rpc_method_handler(each)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Echoes(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"grpc://127.0.0.1:{port}", seen, ended
    finally:
        await server.stop(0)
