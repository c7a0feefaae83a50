"""The gRPC path under faults, with real grpc.aio peers on loopback: deadlines,
statuses and metadata passed through, shadows that fail, size limits, routing, health,
streams."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shadowproxy.compare import Comparer
from shadowproxy.compare.inference_grpc import message_class
from shadowproxy.errors import ConfigError
from tests.grpc_support import INFER, fake_upstream, stream_upstream
from tests.support import RunningProxy, black_hole, free_port, running_proxy, write_config

OTHER = "/demo.Echo/Say"


async def echo(request: bytes, context: Any) -> bytes:
    return b"echo:" + request


def grpc_route(name: str, match: str, production: str, shadows: Any = (), **extra: Any) -> Any:
    return {
        "name": name,
        "match": {"grpc": match},
        "production": {"url": production, "timeout_s": extra.pop("timeout_s", 5)},
        "shadows": list(shadows),
        **extra,
    }


@contextlib.asynccontextmanager
async def proxy_for(tmp_path: Path, routes: list[Any], **main: Any) -> AsyncIterator[RunningProxy]:
    config = write_config(tmp_path, routes, grpc_listen="127.0.0.1:0", **main)
    async with running_proxy(config) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def client(proxy: RunningProxy) -> AsyncIterator[grpc.aio.Channel]:
    host, port = proxy.server.grpc_address  # type: ignore[misc]
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        yield channel


async def test_client_deadline_cancels_production(tmp_path: Path) -> None:
    async def slow(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(5)
        return b"late"

    async with fake_upstream(slow) as prod:
        async with proxy_for(tmp_path, [grpc_route("m", "demo.Echo", prod.url)]) as proxy:
            async with client(proxy) as channel:
                started = time.perf_counter()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(OTHER)(b"x", timeout=0.3)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.perf_counter() - started < 2
                for _ in range(150):
                    if prod.cancelled:
                        break
                    await asyncio.sleep(0.02)
                assert prod.cancelled == 1


async def test_status_details_and_metadata_pass_through_exactly(tmp_path: Path) -> None:
    async def refuse(request: bytes, context: Any) -> bytes:
        await context.send_initial_metadata((("x-model", "v7"),))
        await context.abort(grpc.StatusCode.NOT_FOUND, "no model iris-9", (("x-why", "gone"),))
        raise AssertionError

    async def answer(request: bytes, context: Any) -> bytes:
        await context.send_initial_metadata((("x-model", "v7"),))
        context.set_trailing_metadata((("x-cost", "3"), ("x-blob-bin", b"\x00\xff")))
        return b"ok:" + request

    async with fake_upstream(refuse) as bad, fake_upstream(answer) as good:
        async with fake_upstream(echo) as shadow:
            routes = [
                grpc_route("bad", "demo.Bad", bad.url),
                grpc_route(
                    "good", "demo.Good", good.url,
                    [{"name": "s", "url": shadow.url, "headers": {"drop": ["authorization"]}}],
                ),
            ]  # fmt: skip
            async with proxy_for(tmp_path, routes) as proxy:
                async with client(proxy) as channel:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await channel.unary_unary("/demo.Bad/Get")(b"x")
                    error = caught.value
                    assert (error.code(), error.details()) == (
                        grpc.StatusCode.NOT_FOUND, "no model iris-9",
                    )  # fmt: skip
                    assert ("x-why", "gone") in tuple(error.trailing_metadata())
                    assert ("x-model", "v7") in tuple(error.initial_metadata())

                    metadata = (("x-request-id", "rid-1"), ("authorization", "secret"))
                    call = channel.unary_unary("/demo.Good/Get")(b"in", metadata=metadata)
                    assert await call == b"ok:in"
                    initial = tuple(await call.initial_metadata())
                    assert ("x-request-id", "rid-1") in initial and ("x-model", "v7") in initial
                    trailing = tuple(await call.trailing_metadata())
                    assert ("x-cost", "3") in trailing and ("x-blob-bin", b"\x00\xff") in trailing

                    unnamed = channel.unary_unary("/demo.Good/Get")(b"in")
                    await unnamed
                    generated = dict(await unnamed.initial_metadata())["x-request-id"]
                    assert len(generated) == 32
                await proxy.sink.wait_for(2)
            assert proxy.metric(
                "shadowproxy_requests_total", route="bad", code="404", grpc_status="NOT_FOUND"
            ) == 1  # fmt: skip
    production_md = good.calls[0][2]
    assert production_md["x-request-id"] == "rid-1"
    assert production_md["authorization"] == "secret"
    assert "x-shadow-request" not in production_md
    copy_md = shadow.calls[0][2]
    assert copy_md["x-shadow-request"] == "true" and copy_md["x-request-id"] == "rid-1"
    assert "authorization" not in copy_md
    pair = proxy.sink.pairs[0]
    assert (pair.request.protocol, pair.request.method, pair.request.path) == (
        "grpc", "POST", "/demo.Good/Get",
    )  # fmt: skip
    assert pair.request.body == b"in" and pair.production.body == b"ok:in"
    assert pair.result.body == b"echo:in"
    comparison = Comparer(proxy.server.config.routes)(pair)
    assert (comparison.comparator, comparison.agree) == ("exact", False)


async def test_failing_shadows_are_rows_and_never_touch_the_client(tmp_path: Path) -> None:
    async def unavailable(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "model loading")
        raise AssertionError

    async def malformed(request: bytes, context: Any) -> bytes:
        return b"\xff\xff\xff\xff"

    answer = message_class("ModelInferResponse")(model_name="m")
    tensor = answer.outputs.add(name="y", datatype="FP32", shape=[1])  # type: ignore[attr-defined]
    tensor.contents.fp32_contents.append(0.5)
    body = answer.SerializeToString()

    async def infer(request: bytes, context: Any) -> bytes:
        return body

    async with fake_upstream(infer) as prod, fake_upstream(unavailable) as down_ish:
        async with fake_upstream(malformed) as garbage:
            shadows = [{"name": "unavailable", "url": down_ish.url},
                       {"name": "garbage", "url": garbage.url}]  # fmt: skip
            compare = {"prediction": "open-inference"}
            routes = [grpc_route("m", "inference.GRPCInferenceService", prod.url, shadows,
                                 compare=compare)]  # fmt: skip
            async with proxy_for(tmp_path, routes) as proxy:
                async with client(proxy) as channel:
                    assert await channel.unary_unary(INFER)(b"") == body
                pairs = {p.shadow: p for p in await proxy.sink.wait_for(2)}
    comparer = Comparer(proxy.server.config.routes)
    failed = pairs["unavailable"].result
    assert (failed.outcome, failed.grpc_status, failed.status) == ("error", "UNAVAILABLE", 503)
    assert comparer(pairs["unavailable"]).detail.startswith("shadow error (UNAVAILABLE: model")
    bad = pairs["garbage"]
    assert (bad.result.outcome, bad.result.grpc_status) == ("ok", "OK")
    detail = comparer(bad).detail
    assert detail is not None and detail.startswith("shadow message is not a ModelInferResponse")


async def test_black_holed_and_down_shadows_add_no_latency(tmp_path: Path) -> None:
    async def quick(request: bytes, context: Any) -> bytes:
        return b"ok"

    async def median_ms(channel: grpc.aio.Channel, method: str) -> float:
        times = []
        for _ in range(40):
            started = time.perf_counter()
            await channel.unary_unary(method)(b"x", timeout=5)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    async with fake_upstream(quick) as prod, black_hole() as hole:
        shadows = [
            {"name": "hole", "url": hole.replace("http", "grpc"), "timeout_s": 0.5},
            {"name": "down", "url": f"grpc://127.0.0.1:{free_port()}", "timeout_s": 0.5},
        ]
        routes = [grpc_route("shadowed", "demo.A", prod.url, shadows),
                  grpc_route("plain", "demo.B", prod.url)]  # fmt: skip
        async with proxy_for(tmp_path, routes) as proxy:
            async with client(proxy) as channel:
                await median_ms(channel, "/demo.B/Warm")
                plain = await median_ms(channel, "/demo.B/Get")
                shadowed = await median_ms(channel, "/demo.A/Get")
            pairs = await proxy.sink.wait_for(80)
    assert shadowed < plain + 5, (shadowed, plain)
    outcomes = {(p.shadow, p.result.outcome) for p in pairs}
    assert ("hole", "timeout") in outcomes
    assert ("down", "error") in outcomes


async def test_a_message_over_the_limit_is_refused_before_any_upstream(tmp_path: Path) -> None:
    async with fake_upstream(echo) as prod, fake_upstream(echo) as shadow:
        routes = [grpc_route("m", "demo.Echo", prod.url, [{"name": "s", "url": shadow.url}],
                             grpc_max_message_bytes=1000)]  # fmt: skip
        async with proxy_for(tmp_path, routes) as proxy:
            async with client(proxy) as channel:
                for _ in range(20):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await channel.unary_unary(OTHER)(b"x" * 5000)
                    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "over grpc_max_message_bytes (1000)" in (caught.value.details() or "")
                assert await channel.unary_unary(OTHER)(b"x" * 990) == b"echo:" + b"x" * 990
            refused = {"route": "m", "code": "429", "grpc_status": "RESOURCE_EXHAUSTED"}
            assert proxy.metric("shadowproxy_requests_total", **refused) == 20
    assert len(prod.calls) == 1 and len(shadow.calls) == 1


async def test_method_route_beats_service_route_and_unmatched_is_unimplemented(
    tmp_path: Path,
) -> None:
    async def one(request: bytes, context: Any) -> bytes:
        return b"service"

    async def two(request: bytes, context: Any) -> bytes:
        return b"method"

    async with fake_upstream(one) as service, fake_upstream(two) as method:
        routes = [grpc_route("svc", "demo.Echo", service.url),
                  grpc_route("one", "demo.Echo/Say", method.url)]  # fmt: skip
        async with proxy_for(tmp_path, routes) as proxy:
            async with client(proxy) as channel:
                assert await channel.unary_unary("/demo.Echo/Say")(b"") == b"method"
                assert await channel.unary_unary("/demo.Echo/Other")(b"") == b"service"
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary("/nobody.Home/Call")(b"")
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert caught.value.details() == "no route matches method /nobody.Home/Call"
            unmatched = {"route": "_unmatched", "code": "501", "grpc_status": "UNIMPLEMENTED"}
            assert proxy.metric("shadowproxy_requests_total", **unmatched) == 1


async def test_health_serves_then_says_not_serving_while_draining(tmp_path: Path) -> None:
    check = "/grpc.health.v1.Health/Check"
    async with fake_upstream(echo) as prod:
        config = write_config(tmp_path, [grpc_route("m", "demo.Echo", prod.url)],
                              grpc_listen="127.0.0.1:0")  # fmt: skip
        async with running_proxy(config) as proxy:
            async with client(proxy) as channel:
                assert await channel.unary_unary(check)(b"") == b"\x08\x01"
                assert await channel.unary_unary(check)(b"\x0a\x09demo.Echo") == b"\x08\x01"
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(check)(b"\x0a\x05other")
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
                watch = channel.unary_stream("/grpc.health.v1.Health/Watch")(b"")
                assert await watch.read() == b"\x08\x01"
                stopping = asyncio.get_running_loop().create_task(proxy.server.stop())
                assert await asyncio.wait_for(watch.read(), 5) == b"\x08\x02"
                await stopping


async def test_streams_pass_through_and_single_message_streams_are_shadowed(
    tmp_path: Path,
) -> None:
    async with stream_upstream() as (url, seen, _):
        routes = [grpc_route("s", "demo.Stream", url, [{"name": "copy", "url": url}])]
        async with proxy_for(tmp_path, routes) as proxy:
            async with client(proxy) as channel:
                call = channel.stream_stream("/demo.Stream/Chat")(iter([b"a", b"b", b"c"]))
                assert [message async for message in call] == [b"re:a", b"re:b", b"re:c"]
                single = channel.stream_stream("/demo.Stream/Chat")(iter([b"one"]))
                assert [message async for message in single] == [b"re:one"]
            pairs = await proxy.sink.wait_for(2)
    by_body = {pair.request.body: pair for pair in pairs}
    streamed = by_body[b""]
    assert (streamed.result.outcome, streamed.result.error) == ("skipped", "streaming")
    copied = by_body[b"one"]
    assert copied.result.outcome == "ok" and copied.production.body == b"re:one"
    assert seen.count(b"one") == 2  # production's call and the shadow's copy


async def test_reload_applies_to_grpc_routes_and_sample_keys_read_metadata(
    tmp_path: Path,
) -> None:
    async with fake_upstream(echo) as prod, fake_upstream(echo) as shadow:
        plain = grpc_route("m", "demo.Echo", prod.url)
        config = write_config(tmp_path, [plain], grpc_listen="127.0.0.1:0")
        async with running_proxy(config) as proxy:
            async with client(proxy) as channel:
                await channel.unary_unary(OTHER)(b"before")
                sticky = {"name": "s", "url": shadow.url, "sample_rate": 0.5,
                          "sample_key": "X-User-Id"}  # fmt: skip
                write_config(tmp_path, [grpc_route("m", "demo.Echo", prod.url, [sticky])],
                             grpc_listen="127.0.0.1:0")  # fmt: skip
                assert (await proxy.server.reload()).ok
                for user in range(40):
                    for _ in range(2):  # the same user twice: in or out both times
                        metadata = (("x-user-id", f"user-{user}"),)
                        await channel.unary_unary(OTHER)(b"after", metadata=metadata)
                too_big = grpc_route("m", "demo.Echo", prod.url, grpc_max_message_bytes=2**30)
                write_config(tmp_path, [too_big], grpc_listen="127.0.0.1:0")
                refused = await proxy.server.reload()
            assert not refused.ok
            assert "grpc_max_message_bytes: above 4194304" in (refused.error or "")
            pairs = await proxy.sink.wait_for(len(shadow.calls))
    users = [dict(call[2])["x-user-id"] for call in shadow.calls]
    assert 0 < len(set(users)) < 40  # sampled by user...
    assert all(users.count(user) == 2 for user in users)  # ...and sticky
    assert {p.request.body for p in pairs} == {b"after"}


@pytest.fixture
def certificate(tmp_path: Path) -> bytes:
    """A self-signed certificate for localhost (cert.pem), its key beside it (key.pem)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return (tmp_path / "cert.pem").read_bytes()


async def test_the_listener_serves_tls_with_the_configured_certificate(
    tmp_path: Path, certificate: bytes
) -> None:
    async with fake_upstream(echo) as prod:
        tls = {"cert_file": "cert.pem", "key_file": "key.pem"}
        async with proxy_for(tmp_path, [grpc_route("m", "demo.Echo", prod.url)],
                             grpc_tls=tls) as proxy:  # fmt: skip
            _, port = proxy.server.grpc_address  # type: ignore[misc]
            roots = grpc.ssl_channel_credentials(certificate)
            async with grpc.aio.secure_channel(f"localhost:{port}", roots) as channel:
                assert await channel.unary_unary(OTHER)(b"tls") == b"echo:tls"
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
                with pytest.raises(grpc.aio.AioRpcError):
                    await plain.unary_unary(OTHER)(b"cleartext", timeout=2)
    missing = write_config(tmp_path, [grpc_route("m", "demo.Echo", "grpc://127.0.0.1:1")],
                           grpc_listen="127.0.0.1:0",
                           grpc_tls={"cert_file": "nope.pem", "key_file": "key.pem"})  # fmt: skip
    with pytest.raises(ConfigError, match=r"grpc_tls.key_file|grpc_tls.cert_file: cannot read"):
        async with running_proxy(missing):
            pass


async def test_chaos_on_production_answers_the_mapped_grpc_code(tmp_path: Path) -> None:
    async with fake_upstream(echo) as prod:
        chaos = [{"target": "production", "fraction": 0.05, "abort_status": 503,
                  "allow_production": True}]  # fmt: skip
        async with proxy_for(
            tmp_path, [grpc_route("m", "inference.GRPCInferenceService", prod.url, chaos=chaos)]
        ) as proxy:
            handler = proxy.server._grpc.handler  # type: ignore[union-attr]
            handler.snapshot.routes["m"].chaos.rng = lambda: 0.0  # every call is hit
            async with client(proxy) as channel:
                for method in (INFER, "/inference.GRPCInferenceService/ModelStreamInfer"):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await channel.unary_unary(method)(b"x")  # a stream of one, too
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert caught.value.details() == "injected by chaos (abort_status=503)"
            injected = {"route": "m", "target": "production", "fault": "abort"}
            assert proxy.metric("shadowproxy_chaos_injected_total", **injected) == 2
    assert prod.calls == []


async def test_production_ending_a_stream_early_ends_it_for_the_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Refuses(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            async def first_only(requests: Any, context: Any) -> None:
                await context.read()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "one is enough")

            return grpc.stream_stream_rpc_method_handler(first_only)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Refuses(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        routes = [grpc_route("s", "demo.Stream", f"grpc://127.0.0.1:{port}")]
        async with proxy_for(tmp_path, routes) as proxy:

            async def messages() -> AsyncIterator[bytes]:
                for _ in range(50):
                    yield b"m"
                    await asyncio.sleep(0.01)

            async with client(proxy) as channel:
                call = channel.stream_stream("/demo.Stream/Chat")(messages())
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in call:
                        pass
            assert (caught.value.code(), caught.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT, "one is enough",
            )  # fmt: skip
            failed = {"route": "s", "code": "400", "grpc_status": "INVALID_ARGUMENT"}
            assert proxy.metric("shadowproxy_requests_total", **failed) == 1
    finally:
        await server.stop(0)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
