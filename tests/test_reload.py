"""Hot reload: SIGHUP and POST /reload, against real upstreams on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.compare import Comparer
from shadowproxy.config import RecordingConfig, RouteConfig
from shadowproxy.metrics import Metrics
from shadowproxy.recording import Recorder, read_dataset
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult
from tests.support import (
    free_port,
    route,
    running_proxy,
    upstream,
    wait_listening,
    write_config,
)

PREDICT_M = "/v1/models/m:predict"
PREDICT_N = "/v1/models/n:predict"


def rewrite(directory: Path, routes: list[dict[str, Any]], **main: Any) -> Path:
    """The config files as an operator edits them: route files removed or replaced."""
    shutil.rmtree(directory / "routes", ignore_errors=True)
    return write_config(directory, routes, **main)


async def post(client: aiohttp.ClientSession, url: str, data: bytes = b"{}") -> tuple[int, bytes]:
    async with client.post(url, data=data) as response:
        return response.status, await response.read()


async def reload(
    client: aiohttp.ClientSession, admin_url: str, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.post(admin_url + "/reload", headers=headers) as response:
        return response.status, await response.json()


# --- a raw upstream that shows when the proxy closes its connection --------------------


@dataclass
class RawUpstream:
    """Answers after ``release`` is set, keeps the connection, notes when it closes."""

    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    answers: int = 0


@contextlib.asynccontextmanager
async def raw_upstream(body: bytes = b'{"predictions": [1]}') -> AsyncIterator[RawUpstream]:
    state = RawUpstream()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                state.received.set()
                await state.release.wait()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                state.answers += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        state.closed.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        state.release.set()
        server.close()


async def raw_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, bytes]:
    """One request on an open client connection, which stays open."""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = next(
        int(line.partition(":")[2])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    )
    return status, await reader.readexactly(length)


# --- what a reload changes ---------------------------------------------------------------


async def test_reload_adds_a_route_removes_a_shadow_changes_sample_rate_and_timeout(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        if "slow" in request.query:
            await asyncio.sleep(1.0)
        return web.json_response({"predictions": [1]})

    async with upstream(slow) as prod, upstream() as s1, upstream() as s2, upstream() as other:
        shadows = [{"name": "s1", "url": s1.url}, {"name": "s2", "url": s2.url}]
        config = write_config(tmp_path, [route("m", prod.url, shadows)])
        async with running_proxy(config) as proxy:
            assert proxy.metric("shadowproxy_config_reloads_total", result="success") == 0
            assert proxy.metric("shadowproxy_config_reloads_total", result="failure") == 0
            assert proxy.metric("shadowproxy_config_last_reload_successful") == 1
            loaded_at = proxy.metric("shadowproxy_config_last_reload_success_timestamp_seconds")
            assert loaded_at > 0
            assert (await post(client, proxy.url + PREDICT_M + "?slow"))[0] == 200
            assert (await post(client, proxy.url + PREDICT_N))[0] == 404
            await proxy.sink.wait_for(2)

            rewrite(
                tmp_path,
                [
                    route(
                        "m",
                        prod.url,
                        [{"name": "s1", "url": s1.url, "sample_rate": 0.0}],
                        timeout_s=0.3,
                    ),
                    route("n", other.url),
                ],
            )
            status, body = await reload(client, proxy.admin_url)
            assert (status, body) == (200, {"result": "success", "routes": 2})

            # The new route answers; the old one now times out at 0.3 s.
            assert (await post(client, proxy.url + PREDICT_N))[0] == 200
            assert len(other.seen) == 1
            assert (await post(client, proxy.url + PREDICT_M + "?slow"))[0] == 504
            assert (await post(client, proxy.url + PREDICT_M))[0] == 200
            await asyncio.sleep(0.2)
            # s1 at rate 0 gets no copy, s2 is gone: no new pair, no new copy.
            assert len(proxy.sink.pairs) == 2
            assert len(s1.seen) == 1 and len(s2.seen) == 1

            assert proxy.metric("shadowproxy_config_reloads_total", result="success") == 1
            assert (
                proxy.metric("shadowproxy_config_last_reload_success_timestamp_seconds")
                >= loaded_at
            )
            info = {"route": "m", "role": "candidate"}
            assert proxy.metric("shadowproxy_shadow_info", **info, shadow="s1") == 1
            assert (
                proxy.registry.get_sample_value("shadowproxy_shadow_info", {**info, "shadow": "s2"})
                is None
            )
            # The counters of the removed shadow stay, as Prometheus expects.
            assert (
                proxy.metric(
                    "shadowproxy_shadow_requests_total", route="m", shadow="s2", outcome="ok"
                )
                == 1
            )

            async with client.get(proxy.admin_url + "/routes") as response:
                routes = {r["name"]: r for r in (await response.json())["routes"]}
            assert set(routes) == {"m", "n"}
            assert routes["m"]["production"]["timeout_s"] == 0.3
            assert [(s["name"], s["sample_rate"]) for s in routes["m"]["shadows"]] == [("s1", 0.0)]


async def test_an_in_flight_request_finishes_under_the_config_it_started_with(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with raw_upstream(b'{"from": "old"}') as old, upstream() as new, upstream() as shadow:
        config = write_config(tmp_path, [route("m", old.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            in_flight = asyncio.ensure_future(post(client, proxy.url + PREDICT_M))  # noqa: TID251 - awaited below
            await asyncio.wait_for(old.received.wait(), 5)

            rewrite(tmp_path, [route("m", new.url)])
            status, body = await reload(client, proxy.admin_url)
            assert status == 200, body
            # New requests go to the new production, without a shadow.
            assert (await post(client, proxy.url + PREDICT_M))[0] == 200
            assert len(new.seen) == 1
            assert not in_flight.done() and not old.closed.is_set()

            old.release.set()
            assert await asyncio.wait_for(in_flight, 5) == (200, b'{"from": "old"}')
            pairs = await proxy.sink.wait_for(1)
            assert [(p.shadow, p.result.outcome, p.production.body) for p in pairs] == [
                ("s", "ok", b'{"from": "old"}')
            ]
            # Its pool was dropped by the reload: closed once the request was done.
            await asyncio.wait_for(old.closed.wait(), 5)
            assert old.answers == 1
            await asyncio.sleep(0.2)
            assert len(proxy.sink.pairs) == 1


async def test_a_removed_shadows_pool_closes_after_its_copy_finishes(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod, raw_upstream() as removed, raw_upstream() as kept:
        kept.release.set()
        shadows = [{"name": "gone", "url": removed.url}, {"name": "kept", "url": kept.url}]
        config = write_config(tmp_path, [route("m", prod.url, shadows)])
        async with running_proxy(config) as proxy:
            assert (await post(client, proxy.url + PREDICT_M))[0] == 200
            await asyncio.wait_for(removed.received.wait(), 5)

            rewrite(tmp_path, [route("m", prod.url, [{"name": "kept", "url": kept.url}])])
            assert (await reload(client, proxy.admin_url))[0] == 200
            await asyncio.sleep(0.3)
            assert not removed.closed.is_set()  # the copy is still running
            labels = {"route": "m", "shadow": "gone"}
            assert proxy.metric("shadowproxy_shadow_in_flight", **labels) == 1

            removed.release.set()
            await asyncio.wait_for(removed.closed.wait(), 5)
            pairs = await proxy.sink.wait_for(2)
            assert sorted((p.shadow, p.result.outcome) for p in pairs) == [
                ("gone", "ok"),
                ("kept", "ok"),
            ]
            assert proxy.metric("shadowproxy_shadow_in_flight", **labels) == 0
            # The kept shadow keeps its pool and its keep-alive connection.
            assert (await post(client, proxy.url + PREDICT_M))[0] == 200
            await proxy.sink.wait_for(3)
            assert not kept.closed.is_set()


async def test_a_client_connection_and_production_pool_survive_a_reload(
    tmp_path: Path,
) -> None:
    peers: list[int] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        return web.json_response({"predictions": [1]})

    async with upstream(answer) as prod, upstream() as shadow:
        config = write_config(tmp_path, [route("m", prod.url, [{"name": "s", "url": shadow.url}])])
        async with running_proxy(config) as proxy:
            host, port = proxy.server.proxy_address  # type: ignore[misc]
            reader, writer = await asyncio.open_connection(host, port)
            try:
                assert (await raw_request(reader, writer, PREDICT_M))[0] == 200
                shadows = [{"name": "s", "url": shadow.url, "sample_rate": 0.5}]
                rewrite(
                    tmp_path, [route("m", prod.url, shadows, timeout_s=2), route("n", prod.url)]
                )
                assert (await proxy.server.reload()).ok
                # Same client connection, same production connection, new config.
                assert (await raw_request(reader, writer, PREDICT_M))[0] == 200
                assert (await raw_request(reader, writer, PREDICT_N))[0] == 200
            finally:
                writer.close()
        assert len(peers) == 3 and len(set(peers)) == 1


# --- what a reload refuses -------------------------------------------------------------


async def test_an_invalid_route_file_is_rejected_whole(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod, upstream() as shadow:
        config = write_config(tmp_path, [route("m", prod.url)])
        async with running_proxy(config) as proxy:
            bad = route("bad", prod.url, [{"name": "s", "url": shadow.url, "sample_rate": 1.5}])
            rewrite(tmp_path, [route("m", prod.url, timeout_s=1), route("n", prod.url), bad])
            status, body = await reload(client, proxy.admin_url)
            bad_file = tmp_path / "routes" / "bad.yaml"
            assert status == 422
            assert body == {
                "result": "failure",
                "error": f"{bad_file}: shadows[0].sample_rate: must be between 0 and 1, got 1.5",
            }
            # Nothing of it applies: the old config keeps serving.
            assert (await post(client, proxy.url + PREDICT_N))[0] == 404
            assert (await post(client, proxy.url + PREDICT_M))[0] == 200
            async with client.get(proxy.admin_url + "/routes") as response:
                routes = (await response.json())["routes"]
            assert [(r["name"], r["production"]["timeout_s"]) for r in routes] == [("m", 5)]
            assert proxy.metric("shadowproxy_config_reloads_total", result="failure") == 1
            assert proxy.metric("shadowproxy_config_reloads_total", result="success") == 0
            assert proxy.metric("shadowproxy_config_last_reload_successful") == 0

            bad_file.unlink()
            assert (await reload(client, proxy.admin_url)) == (
                200,
                {"result": "success", "routes": 2},
            )
            assert (await post(client, proxy.url + PREDICT_N))[0] == 200
            assert proxy.metric("shadowproxy_config_last_reload_successful") == 1


async def test_a_reload_failure_is_logged_with_file_and_field(tmp_path: Path, caplog: Any) -> None:
    async with upstream() as prod:
        config = write_config(tmp_path, [route("m", prod.url)])
        async with running_proxy(config) as proxy:
            (tmp_path / "routes" / "m.yaml").write_text("name: m\nmatch: {path_prefix: /x}\n")
            result = await proxy.server.reload()
    assert not result.ok
    message = f"reload failed: {tmp_path / 'routes' / 'm.yaml'}: production: required"
    assert result.error == message.removeprefix("reload failed: ")
    assert message in caplog.text


async def test_restart_only_settings_are_refused_by_name(tmp_path: Path) -> None:
    async with upstream() as prod:
        config = write_config(tmp_path, [route("m", prod.url)])
        async with running_proxy(config) as proxy:
            source = tmp_path / "shadowproxy.yaml"
            changes: list[tuple[dict[str, Any], str]] = [
                ({"listen": "127.0.0.1:1"}, "listen"),
                ({"admin_listen": "127.0.0.1:1"}, "admin_listen"),
                ({"shutdown_timeout_s": 1}, "shutdown_timeout_s"),
                ({"recording": {"dir": str(tmp_path / "elsewhere")}}, "recording.dir"),
                (
                    {"recording": {"dir": str(tmp_path / "shadow-logs"), "writer": "thread"}},
                    "recording.writer",
                ),
            ]
            for change, name in changes:
                rewrite(tmp_path, [route("m", prod.url), route("n", prod.url)], **change)
                result = await proxy.server.reload()
                assert (result.ok, result.status) == (False, 422)
                assert result.error is not None
                assert result.error.startswith(f"{source}: {name}: cannot change on reload")
                assert result.error.endswith("restart to apply")
            # What may change does, next to the restart-only settings left as they were.
            rewrite(tmp_path, [route("n", prod.url)], drain_timeout_s=1, admin_token="t")
            result = await proxy.server.reload()
            assert (result.ok, result.routes) == (True, 1)
            assert proxy.server.config.main.drain_timeout_s == 1


async def test_reload_endpoint_needs_the_admin_token(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod:
        config = write_config(tmp_path, [route("m", prod.url)], admin_token="old")
        async with running_proxy(config) as proxy:
            for token in (None, "wrong"):
                status, body = await reload(client, proxy.admin_url, token)
                assert (status, body) == (401, {"error": "missing or wrong bearer token"}), token
            assert proxy.metric("shadowproxy_config_reloads_total", result="success") == 0
            async with client.get(
                proxy.admin_url + "/reload", headers={"Authorization": "Bearer old"}
            ) as response:
                assert response.status == 405

            # The token itself is reloadable: rotated here.
            rewrite(tmp_path, [route("m", prod.url)], admin_token="new")
            assert await reload(client, proxy.admin_url, "old") == (
                200,
                {"result": "success", "routes": 1},
            )
            assert (await reload(client, proxy.admin_url, "old"))[0] == 401
            assert (await reload(client, proxy.admin_url, "new"))[0] == 200
            async with client.get(proxy.admin_url + "/metrics") as response:
                assert response.status == 200


async def test_concurrent_reloads_each_apply_whole(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod:
        config = write_config(tmp_path, [route("m", prod.url)])
        async with running_proxy(config) as proxy:
            rewrite(tmp_path, [route("m", prod.url), route("n", prod.url)])
            results = await asyncio.gather(*(proxy.server.reload() for _ in range(5)))
            assert [r.ok for r in results] == [True] * 5
            assert proxy.metric("shadowproxy_config_reloads_total", result="success") == 5
            assert (await post(client, proxy.url + PREDICT_N))[0] == 200


# --- the real CLI ------------------------------------------------------------------------


async def test_sighup_reloads_the_real_cli_and_the_writer_follows(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with upstream() as prod, upstream() as shadow:
        port, admin = free_port(), free_port()
        main = {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}"}
        shadows = [{"name": "s", "url": shadow.url}]
        labelled = {"prediction": "kserve-v1", "kind": "label"}
        config = write_config(tmp_path, [route("m", prod.url, shadows)], **main)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "serve", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            await wait_listening(port)
            proxy, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}/metrics"
            secret = orjson.dumps({"instances": [1], "secret": "hunter2"})
            assert (await post(client, proxy + PREDICT_M, secret))[0] == 200
            assert (await post(client, proxy + PREDICT_N))[0] == 404

            # A changed route (now redacting) and a new one (comparing labels).
            rewrite(
                tmp_path,
                [
                    route("m", prod.url, shadows, record={"redact": ["$.secret"]}),
                    route("n", prod.url, shadows, compare=labelled),
                ],
                **main,
            )
            process.send_signal(signal.SIGHUP)
            for _ in range(100):
                async with client.get(metrics) as response:
                    if (
                        'shadowproxy_config_reloads_total{result="success"} 1.0'
                        in await response.text()
                    ):
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("SIGHUP did not reload")
            assert (await post(client, proxy + PREDICT_M, secret))[0] == 200
            assert (await post(client, proxy + PREDICT_N))[0] == 200

            # A bad edit: refused, counted, logged; the process keeps serving.
            (tmp_path / "routes" / "n.yaml").write_text("name: n\nmatch: {path_prefix: /x}\n")
            process.send_signal(signal.SIGHUP)
            for _ in range(100):
                async with client.get(metrics) as response:
                    if (
                        'shadowproxy_config_reloads_total{result="failure"} 1.0'
                        in await response.text()
                    ):
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the bad config was not refused")
            assert (await post(client, proxy + PREDICT_N))[0] == 200

            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        output = (await process.stdout.read()).decode()  # type: ignore[union-attr]
        assert code == 0, output
        assert f"reload failed: {tmp_path / 'routes' / 'n.yaml'}: production: required" in output

    rows = read_dataset(str(tmp_path / "shadow-logs")).sort_by("ts").to_pylist()
    assert [(r["route"], r["shadow_outcome"]) for r in rows] == [
        ("m", "ok"),
        ("m", "ok"),
        ("n", "ok"),
        ("n", "ok"),
    ]
    m_before, m_after, n_after, n_second = rows
    assert b"hunter2" in m_before["request_body"]
    assert b"hunter2" not in m_after["request_body"] and b"[redacted]" in m_after["request_body"]
    assert (n_after["comparator"], n_after["agree"]) == ("label", True)
    assert n_second["comparator"] == "label"


# --- the recorder follows reloads ------------------------------------------------------


def recorded_route(**settings: Any) -> RouteConfig:
    return RouteConfig.model_validate(route("m", "http://127.0.0.1:1", **settings))


async def test_the_thread_recorder_uses_the_new_settings_from_the_reload_on(
    tmp_path: Path,
) -> None:
    before = recorded_route(record={"redact": ["$.other"]}, compare={"kind": "exact"})
    after = recorded_route(record={"redact": ["$.secret"]}, compare={"kind": "label"})
    comparer = Comparer([before])
    recorder = Recorder(
        RecordingConfig(dir=str(tmp_path)), [before], Metrics(CollectorRegistry()), comparer
    )
    await recorder.start()
    # Two shadows' pairs of one request, one on each side of the reload.
    request = RequestInfo(
        request_id="r",
        ts=1e9,
        route="m",
        method="POST",
        path="/m",
        query="",
        headers=[],
        body=b'{"secret": "x"}',
        body_complete=True,
    )
    answer = ProductionResult(
        status=200,
        latency_ms=1.0,
        error=None,
        body=b'"a"',
        body_truncated=False,
        content_type="application/json",
    )

    def pair(shadow: str) -> Pair:
        result = ShadowResult(
            outcome="ok",
            status=200,
            latency_ms=1.0,
            error=None,
            body=b'"a"',
            body_truncated=False,
            content_type="application/json",
        )
        return Pair(
            request=request, shadow=shadow, role="candidate", production=answer, result=result
        )

    recorder.submit(pair("s1"))
    recorder.update_routes([after])
    recorder.submit(pair("s2"))
    await recorder.close()
    rows = {row["shadow"]: row for row in read_dataset(str(tmp_path)).to_pylist()}
    assert (rows["s1"]["request_body"], rows["s1"]["comparator"]) == (b'{"secret":"x"}', "exact")
    assert (rows["s2"]["request_body"], rows["s2"]["comparator"]) == (
        b'{"secret":"[redacted]"}',
        "label",
    )


async def test_a_worker_refuses_a_reload_that_adds_a_canary(tmp_path: Path) -> None:
    """``serve --workers N`` refuses canary routes at start; a reload must not bring one
    in, or every worker would take its own decisions into the same state file."""
    from shadowproxy.app import Server
    from shadowproxy.config import load_config

    async with upstream() as prod, upstream() as candidate:
        path = write_config(tmp_path, [route("m", prod.url)], state_dir=str(tmp_path / "state"))
        server = Server(load_config(path), Metrics(CollectorRegistry()), reuse_port=True)
        await server.start()
        try:
            canary = route("m", prod.url, mode="canary")
            canary["canary"] = {"candidate": {"name": "v2", "url": candidate.url}}
            (tmp_path / "routes" / "m.yaml").write_text(orjson.dumps(canary).decode())
            result = await server.reload()
        finally:
            await server.stop()
    assert (result.ok, result.status) == (False, 422)
    assert "run a canary" in (result.error or "") and "--workers 1" in (result.error or "")
