"""gRPC benchmark: unary ``ModelInfer`` (4xFP32 input), one shadow at 100%, vs direct.

::

    python benchmarks/bench_grpc.py [--rounds 3] [--duration 10] [--json out.json]

Every process is separate, all on loopback: the load generator (grpc.aio), production
and the shadow (grpc.aio servers with a fixed answer), and ``shadowproxy serve`` with
recording on (the writer process compares and writes Parquet). Systems:

- ``direct``: the client calls production;
- ``proxy``: through shadowproxy, the shadow healthy;
- ``proxy-blackhole``: through shadowproxy, the shadow accepts connections and never
  answers (copies time out after 2 s);
- ``passthrough``: the floor of any grpc.aio proxy, a generic handler forwarding the
  bytes and nothing else;
- ``passthrough-tee``: the floor of any grpc.aio tee, the same handler plus one copy
  of each call sent to the shadow in the background (its answer dropped): no
  metadata, no sampling, no metrics, no recording;
- ``passthrough-tee-id``: ``passthrough-tee`` that also keeps the proxy's metadata
  contract: production's initial metadata plus ``x-request-id`` back to the client
  (grpc.aio sends initial metadata given by hand as a batch of its own), production's
  trailing metadata passed back.

The floors run on the same grpc.aio and event loop as the proxy, so the proxy's added
latency splits into what grpc.aio costs any tee (``passthrough-tee`` against
``direct``), what the metadata contract costs (``passthrough-tee-id`` against
``passthrough-tee``) and what is the proxy's own (``proxy`` against
``passthrough-tee-id``). Each run also reports the CPU time the process(es) between
client and production spent per call (``cpu_ms_per_call``; the proxy's includes its
writer process, also given alone as ``writer_cpu_ms_per_call``): on a shared, noisy
machine CPU time per call moves much less than latency does.

Loads: ``r500``, 500 calls/s open loop (latency p50/p99 as the client sees it), and
``max``, 64 calls in flight (calls/s). Each round runs every system in turn, in an
order that alternates between rounds (the machine is shared and noisy); figures are
medians over rounds. The proxy is started fresh for each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

INFER = "/inference.GRPCInferenceService/ModelInfer"
WARM_UP_CALLS = 200
FLOORS = ("passthrough", "passthrough-tee", "passthrough-tee-id")
SYSTEMS = ("direct", *FLOORS, "proxy", "proxy-blackhole")
HERE = Path(__file__).resolve().parent
STARTUP_S = 2.0
"""After the proxy listens: its writer process is still importing Arrow, on the same
two cores; measuring then would charge the proxy for its start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def messages() -> tuple[bytes, bytes]:
    """A ModelInferRequest with one 4xFP32 input and its fixed ModelInferResponse."""
    import struct

    from shadowproxy.compare.inference_grpc import message_class

    request: Any = message_class("ModelInferRequest")()
    request.model_name = "bench"
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(struct.pack("<4f", 5.1, 3.5, 1.4, 0.2))
    response: Any = message_class("ModelInferResponse")()
    response.model_name = "bench"
    response.outputs.add(name="y", datatype="FP32", shape=[1, 3])
    response.raw_output_contents.append(struct.pack("<3f", 0.9, 0.05, 0.05))
    return request.SerializeToString(), response.SerializeToString()


# --- the processes -----------------------------------------------------------------


async def serve_every_method(port: int, unary: Callable[[bytes, Any], Awaitable[bytes]]) -> None:
    """A grpc.aio server on loopback answering every method with ``unary``, until killed."""
    import grpc

    class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def upstream(port: int) -> None:
    _, answer = messages()

    async def infer(request: bytes, context: Any) -> bytes:
        return answer

    await serve_every_method(port, infer)


async def passthrough(port: int, production: int) -> None:
    """The floor of any grpc.aio proxy: a generic handler that forwards the bytes to
    production and returns its answer (no metadata, no copies, no recording)."""
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{production}") as channel:
        call = channel.unary_unary(INFER)

        async def forward(request: bytes, context: Any) -> bytes:
            return await call(request)  # type: ignore[no-any-return]

        await serve_every_method(port, forward)


async def passthrough_tee(port: int, production: int, shadow: int, with_id: bool) -> None:
    """The floor of any grpc.aio tee: ``passthrough`` plus one copy of each call to the
    shadow, sent first and not awaited by the call (its answer or error dropped).
    ``with_id``: production's initial metadata and an ``x-request-id`` go back to the
    client, its trailing metadata too (what the proxy's contract asks for)."""
    import grpc

    copies: set[asyncio.Task[Any]] = set()
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{production}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{shadow}") as shadow_channel,
    ):
        call = channel.unary_unary(INFER)
        copy = shadow_channel.unary_unary(INFER)

        async def send_copy(request: bytes) -> None:
            try:
                await copy(request, timeout=2)
            except grpc.aio.AioRpcError:
                pass

        async def forward(request: bytes, context: Any) -> bytes:
            task = asyncio.ensure_future(send_copy(request))  # noqa: TID251
            copies.add(task)
            task.add_done_callback(copies.discard)
            if not with_id:
                return await call(request)  # type: ignore[no-any-return]
            answer = call(request)
            response: bytes = await answer
            initial = tuple(await answer.initial_metadata())
            await context.send_initial_metadata((*initial, ("x-request-id", "0" * 32)))
            context.set_trailing_metadata(tuple(await answer.trailing_metadata()))
            return response

        await serve_every_method(port, forward)


async def black_hole(port: int) -> None:
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", port)
    await server.serve_forever()


async def load(target: str, mode: str, rate: float, duration_s: float) -> dict[str, float]:
    import grpc

    request, _ = messages()
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER)
        for _ in range(WARM_UP_CALLS):  # connection, first calls
            await call(request, timeout=5)
        latencies: list[float] = []
        errors = 0

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                await call(request, timeout=5)
            except grpc.aio.AioRpcError:
                errors += 1
                return
            latencies.append((time.perf_counter() - started) * 1000.0)

        started = time.perf_counter()
        if mode == "rate":
            tasks = []
            count = int(rate * duration_s)
            for n in range(count):
                delay = started + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one()))  # noqa: TID251
            await asyncio.gather(*tasks)
        else:
            end = started + duration_s

            async def worker() -> None:
                while time.perf_counter() < end:
                    await one()

            await asyncio.gather(*(worker() for _ in range(64)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "calls": len(latencies),
        "errors": errors,
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
    }


# --- the driver ----------------------------------------------------------------------


def spawn(*args: str, source: Path | None = None) -> subprocess.Popen[bytes]:
    """``source``: import shadowproxy from this tree (its ``src``) instead."""
    env = None if source is None else {**os.environ, "PYTHONPATH": str(source / "src")}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)  # fmt: skip


def wait_port(port: int, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def proxy_config(directory: Path, production: int, shadow: int, grpc_port: int) -> Path:
    route = (
        "name: bench\n"
        "match: {grpc: inference.GRPCInferenceService}\n"
        f"production: {{url: 'grpc://127.0.0.1:{production}'}}\n"
        f"shadows: [{{name: s, url: 'grpc://127.0.0.1:{shadow}', timeout_s: 2}}]\n"
        "compare: {prediction: open-inference}\n"
    )
    (directory / "routes").mkdir(exist_ok=True)
    (directory / "routes" / "bench.yaml").write_text(route)
    main = (
        f"listen: 127.0.0.1:{free_port()}\nadmin_listen: 127.0.0.1:{free_port()}\n"
        f"grpc_listen: 127.0.0.1:{grpc_port}\nroutes_dir: routes\n"
        f"recording: {{dir: '{directory / 'shadow-logs'}'}}\n"
    )
    path = directory / "shadowproxy.yaml"
    path.write_text(main)
    return path


def run_load(target: str, mode: str, duration_s: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "load", target, mode, str(duration_s)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def measure(
    system: str,
    ports: dict[str, int],
    pids: dict[str, int],
    mode: str,
    duration_s: float,
    baseline: Path | None = None,
) -> dict[str, float]:
    if system == "direct":
        return run_load(f"127.0.0.1:{ports['production']}", mode, duration_s)
    if system in FLOORS:
        return with_cpu(f"127.0.0.1:{ports[system]}", mode, duration_s, pids[system])
    shadow = ports["hole"] if system == "proxy-blackhole" else ports["shadow"]
    grpc_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = proxy_config(Path(tmp), ports["production"], shadow, grpc_port)
        source = baseline if system == "proxy-baseline" else None
        proxy = spawn("-m", "shadowproxy", "serve", "--config", str(config), source=source)
        try:
            wait_port(grpc_port)
            time.sleep(STARTUP_S)
            return with_cpu(f"127.0.0.1:{grpc_port}", mode, duration_s, proxy.pid)
        finally:
            proxy.terminate()
            proxy.wait(30)


def with_cpu(target: str, mode: str, duration_s: float, pid: int) -> dict[str, float]:
    """``run_load``, plus the CPU time ``pid`` and its descendants (the proxy's writer,
    forked by the writer's fork server or spawned) spent per call, warm-up calls
    included; Linux only (``/proc``), else left out."""
    processes = [pid, *descendants_of(pid)]
    before = [cpu_seconds(p) for p in processes]
    figures = run_load(target, mode, duration_s)
    after = [cpu_seconds(p) for p in processes]
    if None in before or None in after:
        return figures
    spent = [b - a for a, b in zip(before, after, strict=True)]  # type: ignore[operator]
    calls = figures["calls"] + figures["errors"] + WARM_UP_CALLS
    figures["cpu_ms_per_call"] = sum(spent) * 1000.0 / calls
    if len(spent) > 1:
        figures["writer_cpu_ms_per_call"] = sum(spent[1:]) * 1000.0 / calls
    return figures


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants_of(pid: int) -> list[int]:
    return [d for child in children_of(pid) for d in (child, *descendants_of(child))]


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run the proxy from this source tree (e.g. an earlier commit's "
        "`git archive`) as system proxy-baseline, for a before/after in one run",
    )
    args = parser.parse_args()
    ports = {name: free_port() for name in ("production", "shadow", "hole", *FLOORS)}
    production, shadow = str(ports["production"]), str(ports["shadow"])
    floors = {
        "passthrough": spawn(__file__, "passthrough", str(ports["passthrough"]), production),
        **{
            name: spawn(__file__, name, str(ports[name]), production, shadow)
            for name in ("passthrough-tee", "passthrough-tee-id")
        },
    }
    pids = {name: process.pid for name, process in floors.items()}
    children = [
        spawn(__file__, "upstream", production),
        *floors.values(),
        spawn(__file__, "upstream", shadow),
        spawn(__file__, "blackhole", str(ports["hole"])),
    ]
    systems = [*SYSTEMS, "proxy-baseline"] if args.baseline else list(SYSTEMS)
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        s: {"rate": [], "max": []} for s in systems
    }
    try:
        for port in ports.values():
            wait_port(port)
        for round_ in range(args.rounds):
            order = systems if round_ % 2 == 0 else systems[::-1]
            for mode in ("rate", "max"):
                for system in order:
                    if mode == "max" and system == "proxy-blackhole":
                        continue
                    figures = measure(system, ports, pids, mode, args.duration, args.baseline)
                    figures["load_average_1m"] = os.getloadavg()[0]  # how shared the machine was
                    results[system][mode].append(figures)
                    print(f"round {round_ + 1} {mode:4} {system:16} {json.dumps(figures)}",
                          flush=True)  # fmt: skip
    finally:
        for child in children:
            child.terminate()
            child.wait(10)
    report = summarise(results)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": report}, indent=2))


def summarise(results: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, float]:
    def median(system: str, mode: str, key: str) -> float:
        return statistics.median(run[key] for run in results[system][mode])

    direct_max = median("direct", "max", "calls_per_s")
    report = {}
    for system in results:
        key = system.replace("-", "_")
        for figure in ("p50_ms", "p99_ms"):
            report[f"{key}_{figure}"] = median(system, "rate", figure)
            if system != "direct":
                report[f"{key}_added_{figure}"] = median(system, "rate", figure) - median(
                    "direct", "rate", figure
                )
        for figure in ("cpu_ms_per_call", "writer_cpu_ms_per_call"):
            if all(figure in run for run in results[system]["rate"]):
                report[f"{key}_{figure}"] = median(system, "rate", figure)
        if system != "proxy-blackhole":
            report[f"{key}_max_calls_per_s"] = median(system, "max", "calls_per_s")
            report[f"{key}_max_ratio"] = median(system, "max", "calls_per_s") / direct_max
    # What is the proxy's own: its latency above the floor of a tee keeping its contract.
    for figure in ("p50_ms", "p99_ms"):
        report[f"proxy_over_floor_{figure}"] = median("proxy", "rate", figure) - median(
            "passthrough-tee-id", "rate", figure
        )
    report["blackhole_p99_change"] = (
        median("proxy-blackhole", "rate", "p99_ms") / median("proxy", "rate", "p99_ms") - 1
    )
    return report


if __name__ == "__main__":
    from shadowproxy.loop import run_loop as runner

    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "upstream":
        runner(upstream(int(sys.argv[2])))
    elif command == "passthrough":
        runner(passthrough(int(sys.argv[2]), int(sys.argv[3])))
    elif command in ("passthrough-tee", "passthrough-tee-id"):
        ports = (int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        runner(passthrough_tee(*ports, with_id=command == "passthrough-tee-id"))
    elif command == "blackhole":
        runner(black_hole(int(sys.argv[2])))
    elif command == "load":
        target, mode, duration = sys.argv[2], sys.argv[3], float(sys.argv[4])
        print(json.dumps(runner(load(target, mode, 500.0, duration))))
    else:
        os.chdir(HERE.parent)
        main()
