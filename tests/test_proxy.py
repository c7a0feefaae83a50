"""End-to-end: real upstreams on loopback, the real proxy in-process, a real client."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from shadowproxy.records import CLIENT_ABANDONED
from tests.support import (
    black_hole,
    closed_port_url,
    route,
    running_proxy,
    upstream,
    write_config,
)

PREDICT = "/v1/models/m:predict"


async def test_production_answer_passes_through_byte_for_byte(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    payload = gzip.compress(bytes(range(256)) * 40)

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=201,
            reason="Created Here",
            body=payload,
            headers={
                "Content-Type": "application/x-model",
                "Content-Encoding": "gzip",
                "X-Model-Version": "7",
                "Set-Cookie": "a=1",
            },
        )

    async with upstream(answer) as prod, upstream() as shadow:
        config = write_config(tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            async with client.post(proxy.url + PREDICT, data=b"\x00\x01binary") as response:
                body = await response.read()
                assert response.status == 201
                assert response.reason == "Created Here"
                assert body == payload
                assert response.headers["Content-Encoding"] == "gzip"
                assert response.headers["Content-Type"] == "application/x-model"
                assert response.headers["X-Model-Version"] == "7"
                assert response.headers["Set-Cookie"] == "a=1"
                assert response.headers["Content-Length"] == str(len(payload))
            assert prod.seen[0].body == b"\x00\x01binary"
            pairs = await proxy.sink.wait_for(1)
            assert pairs[0].production.status == 201
            assert pairs[0].production.body == payload


async def test_shadow_gets_an_identical_copy_with_the_marker(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod, upstream() as shadow:
        config = write_config(tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            headers = {"Content-Type": "application/json", "X-Custom": "abc", "X-Request-Id": "r-1"}
            async with client.post(
                proxy.url + PREDICT + "?verbose=1&x=%20y",
                data=b'{"instances":[1]}',
                headers=headers,
            ) as response:
                assert response.status == 200
                assert response.headers["X-Request-Id"] == "r-1"
            pairs = await proxy.sink.wait_for(1)
            assert pairs[0].result.outcome == "ok"
            assert pairs[0].request.request_id == "r-1"
        got_prod, got_shadow = prod.seen[0], shadow.seen[0]
        assert got_shadow.method == got_prod.method == "POST"
        assert got_shadow.path_qs == got_prod.path_qs == PREDICT + "?verbose=1&x=%20y"
        assert got_shadow.body == got_prod.body == b'{"instances":[1]}'
        prod_headers = CIMultiDict(got_prod.headers)
        shadow_headers = CIMultiDict(got_shadow.headers)
        assert shadow_headers.pop("X-Shadow-Request") == "true"
        assert "X-Shadow-Request" not in prod_headers
        assert shadow_headers.pop("Host") == f"127.0.0.1:{shadow.port}"
        assert prod_headers.pop("Host") == f"127.0.0.1:{prod.port}"
        assert shadow_headers == prod_headers
        assert prod_headers["X-Custom"] == "abc"
        assert prod_headers["X-Request-Id"] == "r-1"
        assert prod_headers["X-Forwarded-For"] == "127.0.0.1"
        assert prod_headers["X-Forwarded-Proto"] == "http"
        assert prod_headers["X-Forwarded-Host"].startswith("127.0.0.1:")


async def test_request_id_is_generated_when_missing_or_invalid(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod:
        config = write_config(tmp_path, [route("m", prod.url)])
        async with running_proxy(config) as proxy:
            async with client.post(proxy.url + PREDICT, data=b"{}") as response:
                generated = response.headers["X-Request-Id"]
            async with client.post(
                proxy.url + PREDICT, data=b"{}", headers={"X-Request-Id": "x" * 500}
            ) as response:
                replaced = response.headers["X-Request-Id"]
        assert len(generated) == 32 and len(replaced) == 32 and generated != replaced
        assert CIMultiDict(prod.seen[0].headers)["X-Request-Id"] == generated


async def test_hop_by_hop_headers_are_stripped_both_ways(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=b"ok",
            headers={"Connection": "X-Upstream-Hop", "X-Upstream-Hop": "1", "X-Kept": "1"},
        )

    async with upstream(answer) as prod, upstream() as shadow:
        config = write_config(tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            headers = {
                "Connection": "keep-alive, X-Client-Hop",
                "X-Client-Hop": "secret",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic abc",
                "Upgrade": "h2c",
                "X-End-To-End": "yes",
            }
            async with client.post(proxy.url + PREDICT, data=b"{}", headers=headers) as response:
                assert "X-Upstream-Hop" not in response.headers
                assert response.headers["X-Kept"] == "1"
            await proxy.sink.wait_for(1)
        for seen in (prod.seen[0], shadow.seen[0]):
            names = {name.lower() for name, _ in seen.headers}
            assert names.isdisjoint(
                {"x-client-hop", "keep-alive", "te", "proxy-authorization", "upgrade"}
            )
            assert dict(seen.headers)["X-End-To-End"] == "yes"


async def test_production_down_is_502_with_request_id(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    config = write_config(tmp_path, [route("m", closed_port_url())])
    async with running_proxy(config) as proxy:
        async with client.post(
            proxy.url + PREDICT, data=b"{}", headers={"X-Request-Id": "abc"}
        ) as response:
            assert response.status == 502
            body = await response.json()
        assert body["request_id"] == "abc"
        assert body["status"] == 502
        assert "unreachable" in body["error"]
        assert proxy.metric("shadowproxy_requests_total", route="m", code="502") == 1


async def test_production_timeout_is_504(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with black_hole() as prod_url:
        config = write_config(tmp_path, [route("m", prod_url, timeout_s=0.3)])
        async with running_proxy(config) as proxy:
            started = time.perf_counter()
            async with client.post(proxy.url + PREDICT, data=b"{}") as response:
                assert response.status == 504
                body = await response.json()
            assert time.perf_counter() - started < 2.0
            assert body["request_id"] == response.headers["X-Request-Id"]


async def test_production_errors_pass_through_untouched(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, body=b"model overloaded", content_type="text/plain")

    async with upstream(answer) as prod:
        config = write_config(tmp_path, [route("m", prod.url)])
        async with running_proxy(config) as proxy:
            async with client.post(proxy.url + PREDICT, data=b"{}") as response:
                assert response.status == 503
                assert await response.read() == b"model overloaded"


async def _timed_request(client: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with client.post(url, data=b'{"instances":[1]}') as response:
        assert response.status == 200
        await response.read()
    return time.perf_counter() - started


async def test_slow_down_and_black_holed_shadows_do_not_delay_production(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2.0)
        return web.json_response({"predictions": [2.0]})

    async with upstream() as prod, upstream(slow) as slow_shadow, black_hole() as hole:
        shadows = [
            {"name": "slow", "url": slow_shadow.url, "timeout_s": 5},
            {"name": "down", "url": closed_port_url()},
            {"name": "hole", "url": hole, "timeout_s": 5},
        ]
        config = write_config(tmp_path, [route("m", prod.url, shadows)])
        async with running_proxy(config) as proxy:
            timings = [await _timed_request(client, proxy.url + PREDICT) for _ in range(5)]
            # The shadows take 2 s or never answer; production must not wait for them.
            assert max(timings) < 0.5, timings
            down = await proxy.sink.wait_for(5)
            assert {pair.shadow for pair in down} == {"down"}
            assert all(pair.result.outcome == "error" for pair in down)
            assert proxy.server.tee.tasks and len(proxy.server.tee.tasks) == 10


async def test_sse_first_event_arrives_before_the_stream_ends(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n')
        await release.wait()
        await response.write(b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async with upstream(stream) as prod, upstream() as shadow:
        config = write_config(tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            async with client.post(proxy.url + PREDICT, data=b"{}") as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 2.0)
                assert b"Hel" in first
                release.set()
                rest = await response.read()
            assert b"[DONE]" in rest
            pairs = await proxy.sink.wait_for(1)
            assert b"Hel" in pairs[0].production.body and b"[DONE]" in pairs[0].production.body


async def test_oversized_body_goes_to_production_only(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod, upstream() as shadow:
        config = write_config(
            tmp_path,
            [route("m", prod.url, [{"name": "s", "url": shadow.url}], max_body_bytes=1000)],
        )
        big = b"x" * 5000
        async with running_proxy(config) as proxy:
            async with client.post(proxy.url + PREDICT, data=big) as response:
                assert response.status == 200

            async def chunks():  # type: ignore[no-untyped-def]
                for _ in range(5):
                    yield b"y" * 1000

            async with client.post(proxy.url + PREDICT, data=chunks()) as response:
                assert response.status == 200
            pairs = await proxy.sink.wait_for(2)
            assert [pair.result.outcome for pair in pairs] == ["skipped", "skipped"]
            assert {pair.result.error for pair in pairs} == {"body_too_large"}
            assert (
                proxy.metric(
                    "shadowproxy_shadow_skipped_total",
                    route="m",
                    shadow="s",
                    reason="body_too_large",
                )
                == 2
            )
        assert [seen.body for seen in prod.seen] == [big, b"y" * 5000]
        assert shadow.seen == []


async def test_in_flight_bound_drops_and_counts(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.json_response({"predictions": [1.0]})

    async with upstream() as prod, upstream(slow) as shadow:
        shadows = [{"name": "s", "url": shadow.url, "max_in_flight": 2}]
        config = write_config(tmp_path, [route("m", prod.url, shadows)])
        async with running_proxy(config) as proxy:
            await asyncio.gather(*(_timed_request(client, proxy.url + PREDICT) for _ in range(6)))
            pairs = await proxy.sink.wait_for(6)
            outcomes = sorted(pair.result.outcome for pair in pairs)
            assert outcomes == ["dropped"] * 4 + ["ok"] * 2
            labels = {"route": "m", "shadow": "s"}
            assert (
                proxy.metric("shadowproxy_shadow_requests_total", **labels, outcome="dropped") == 4
            )
            assert proxy.metric("shadowproxy_shadow_requests_total", **labels, outcome="ok") == 2
            assert proxy.metric("shadowproxy_shadow_in_flight", **labels) == 0


async def test_sticky_sampling_by_header(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with upstream() as prod, upstream() as shadow:
        shadows = [{"name": "s", "url": shadow.url, "sample_rate": 0.5, "sample_key": "X-User"}]
        config = write_config(tmp_path, [route("m", prod.url, shadows)])
        async with running_proxy(config) as proxy:
            for user in range(40):
                for _ in range(3):
                    async with client.post(
                        proxy.url + PREDICT, data=b"{}", headers={"X-User": f"user-{user}"}
                    ) as response:
                        assert response.status == 200
            await asyncio.sleep(0.2)
        by_user: dict[str, int] = {}
        for seen in shadow.seen:
            user = dict(seen.headers)["X-User"]
            by_user[user] = by_user.get(user, 0) + 1
        # Every sampled user was sampled on all three of their requests.
        assert set(by_user.values()) == {3}
        assert 8 <= len(by_user) <= 32


async def test_unmatched_requests(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with upstream() as prod, upstream() as fallback:
        without = write_config(tmp_path / "a", [route("m", prod.url)])
        async with running_proxy(without) as proxy:
            async with client.get(proxy.url + "/elsewhere") as response:
                assert response.status == 404
                body = await response.json()
                assert body["request_id"] == response.headers["X-Request-Id"]
        with_default = write_config(
            tmp_path / "b", [route("m", prod.url)], default_upstream=fallback.url
        )
        async with running_proxy(with_default) as proxy:
            async with client.get(proxy.url + "/elsewhere?q=1") as response:
                assert response.status == 200
            assert fallback.seen[0].path_qs == "/elsewhere?q=1"
            assert proxy.sink.pairs == []


async def test_route_methods_and_longest_prefix(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as short, upstream() as long:
        config = write_config(
            tmp_path,
            [
                route("short", short.url, prefix="/v1"),
                {
                    **route("long", long.url, prefix="/v1/models/x"),
                    "match": {"path_prefix": "/v1/models/x", "methods": ["POST"]},
                },
            ],
        )
        async with running_proxy(config) as proxy:
            async with client.post(proxy.url + "/v1/models/x:predict", data=b"{}"):
                pass
            async with client.get(proxy.url + "/v1/models/x"):
                pass
        assert [seen.method for seen in long.seen] == ["POST"]
        assert [seen.method for seen in short.seen] == ["GET"]


async def test_circuit_breaker_skips_a_dead_shadow(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod:
        shadows = [
            {
                "name": "dead",
                "url": closed_port_url(),
                "circuit_breaker": {"failures": 3, "backoff_s": 60},
            }
        ]
        config = write_config(tmp_path, [route("m", prod.url, shadows)])
        async with running_proxy(config) as proxy:
            for _ in range(10):
                await _timed_request(client, proxy.url + PREDICT)
                await asyncio.sleep(0.02)
            pairs = await proxy.sink.wait_for(10)
            outcomes = [pair.result.outcome for pair in pairs]
            assert outcomes.count("error") == 3
            assert outcomes.count("skipped") == 7
            assert {p.result.error for p in pairs if p.result.outcome == "skipped"} == {
                "circuit_open"
            }
            labels = {"route": "m", "shadow": "dead"}
            assert proxy.metric("shadowproxy_shadow_circuit_open", **labels) == 1
            assert (
                proxy.metric("shadowproxy_shadow_skipped_total", **labels, reason="circuit_open")
                == 7
            )


async def test_admin_endpoints(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with upstream() as prod, upstream() as shadow:
        shadows = [{"name": "s", "url": f"http://user:secret@127.0.0.1:{shadow.port}"}]
        config = write_config(tmp_path, [route("m", prod.url, shadows)])
        async with running_proxy(config) as proxy:
            await _timed_request(client, proxy.url + PREDICT)
            await proxy.sink.wait_for(1)
            async with client.get(proxy.admin_url + "/healthz") as response:
                assert response.status == 200
            async with client.get(proxy.admin_url + "/readyz") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "ok"
            async with client.get(proxy.admin_url + "/routes") as response:
                text = await response.text()
                routes = await response.json()
            assert "secret" not in text
            assert routes["routes"][0]["name"] == "m"
            assert routes["routes"][0]["shadows"][0]["circuit"] == "closed"
            async with client.get(proxy.admin_url + "/metrics") as response:
                metrics = await response.text()
        for name in (
            'shadowproxy_requests_total{code="200",grpc_status="",route="m"} 1.0',
            'shadowproxy_request_duration_seconds_count{route="m"} 1.0',
            'shadowproxy_upstream_duration_seconds_count{role="production",route="m",target="production"}',
            'shadowproxy_upstream_duration_seconds_count{role="shadow",route="m",target="s"}',
            'shadowproxy_shadow_requests_total{outcome="ok",route="m",shadow="s"} 1.0',
            'shadowproxy_shadow_in_flight{route="m",shadow="s"} 0.0',
        ):
            assert name in metrics, name


async def test_head_and_no_content_answers(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": "1234", "X-Meta": "1"})
        return web.Response(status=204, headers={"X-Meta": "2"})

    async with upstream(answer) as prod:
        config = write_config(tmp_path, [route("m", prod.url)])
        async with running_proxy(config) as proxy:
            async with client.head(proxy.url + PREDICT) as response:
                assert response.status == 200
                assert response.headers["X-Meta"] == "1"
                assert response.headers["Content-Length"] == "1234"
            async with client.delete(proxy.url + PREDICT) as response:
                assert response.status == 204
                assert response.headers["X-Meta"] == "2"
                assert await response.read() == b""
            # The connection is still good for the next request.
            async with client.delete(proxy.url + PREDICT) as response:
                assert response.status == 204


async def test_client_leaving_mid_stream_is_recorded_and_harmless(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(200):
            await response.write(b"data: tick\n\n")
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async with upstream(endless) as prod, upstream() as shadow:
        config = write_config(tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            response = await client.post(proxy.url + PREDICT, data=b"{}")
            await response.content.readuntil(b"\n\n")
            response.close()  # the client goes away mid-stream
            pairs = await proxy.sink.wait_for(1)
            assert pairs[0].production.error == CLIENT_ABANDONED
            assert pairs[0].production.status == 200
            assert proxy.metric("shadowproxy_requests_total", route="m", code="499") == 1
            assert proxy.metric("shadowproxy_requests_total", route="m", code="200") == 0
            assert await _timed_request(client, proxy.url + "/v1/models/m:other") < 5


async def test_production_failing_mid_stream_cuts_the_client_connection(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # reset mid-body
        return response

    async with upstream(broken) as prod:
        config = write_config(tmp_path, [route("m", prod.url, [])])
        async with running_proxy(config) as proxy:
            async with client.post(proxy.url + PREDICT, data=b"{}") as response:
                assert response.status == 200
                try:
                    await response.read()
                except aiohttp.ClientPayloadError:
                    pass
                else:
                    raise AssertionError("a cut stream must not look complete")


async def test_production_reset_mid_body_before_the_client_got_headers_is_502(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(liar, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = write_config(tmp_path, [route("m", f"http://127.0.0.1:{port}")])
        async with running_proxy(config) as proxy:
            async with client.get(proxy.url + PREDICT, headers={"X-Request-Id": "cut"}) as resp:
                assert resp.status == 502
                assert (await resp.json())["request_id"] == "cut"
            assert proxy.metric("shadowproxy_requests_total", route="m", code="502") == 1
            assert proxy.metric("shadowproxy_requests_total", route="m", code="200") == 0
    finally:
        server.close()


async def test_shadow_header_rules_and_methods_apply_to_the_copy_only(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod, upstream() as shadow:
        shadows = [
            {
                "name": "s",
                "url": shadow.url,
                "methods": ["post"],
                "headers": {"drop": ["authorization", "Cookie"], "set": {"X-Env": "shadow"}},
            }
        ]
        config = write_config(tmp_path, [route("m", prod.url, shadows)])
        async with running_proxy(config) as proxy:
            secret = {"Authorization": "Bearer t0k3n", "Cookie": "s=1", "X-Env": "prod"}
            async with client.post(proxy.url + PREDICT, data=b"{}", headers=secret) as resp:
                assert resp.status == 200
            async with client.get(proxy.url + PREDICT, headers=secret) as resp:
                assert resp.status == 200
            pairs = await proxy.sink.wait_for(1)
            await asyncio.sleep(0.1)
            # The GET is not a method this shadow takes: no copy and no row.
            assert [pair.request.method for pair in proxy.sink.pairs] == ["POST"]
        assert len(shadow.seen) == 1 and len(prod.seen) == 2
        copy = CIMultiDict(shadow.seen[0].headers)
        assert "Authorization" not in copy and "Cookie" not in copy
        assert copy["X-Env"] == "shadow"
        original = CIMultiDict(prod.seen[0].headers)
        assert original["Authorization"] == "Bearer t0k3n" and original["X-Env"] == "prod"
        assert pairs[0].result.outcome == "ok"


async def test_admin_token_guards_state_but_not_probes(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod:
        config = write_config(tmp_path, [route("m", prod.url)], admin_token="s3cret")
        async with running_proxy(config) as proxy:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with client.get(proxy.admin_url + path) as resp:
                    assert resp.status == 200, path
            async with client.get(proxy.admin_url + "/routes") as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with client.post(proxy.admin_url + "/feedback", json=[]) as resp:
                assert resp.status == 401
            wrong = {"Authorization": "Bearer nope"}
            async with client.get(proxy.admin_url + "/routes", headers=wrong) as resp:
                assert resp.status == 401
            right = {"Authorization": "Bearer s3cret"}
            async with client.get(proxy.admin_url + "/routes", headers=right) as resp:
                assert resp.status == 200
                assert "s3cret" not in await resp.text()
