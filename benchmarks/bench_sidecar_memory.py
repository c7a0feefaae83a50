"""The sidecar's memory: PSS of the proxy plus its writer side, recording to S3.

    .venv/bin/python benchmarks/bench_sidecar_memory.py                   # 1,000 req/s, 60 s
    .venv/bin/python benchmarks/bench_sidecar_memory.py --rate 1000 --duration 120
    .venv/bin/python benchmarks/bench_sidecar_memory.py --writer-start spawn  # to compare

What runs, each in its own process: an S3 server (moto's, on loopback), production and
one healthy shadow (``upstreams.py fast``), ``shadowproxy serve`` with one route, the
shadow at ``sample_rate: 1.0`` and ``recording.dir: s3://…`` at the default file and
buffer settings, and ``loadgen.py`` in open loop. Every 0.5 s the harness reads
``/proc/<pid>/smaps_rollup`` of the proxy and of every process under it (the writer,
and with ``writer_start: fork`` the fork server it came from): PSS (shared pages
divided among the processes that map them: what the pod is charged for) and RSS.

The harness itself never imports pyarrow (the bucket is made with a plain PUT): a
process of its own mapping Arrow's libraries would take half of their pages off the
writer's PSS, which no pod would see.

Printed: idle PSS before the load, the median and peak of proxy + writer side under
load, each side's peak, and the load generator's achieved rate and latency; the JSON
goes to ``benchmarks/results/sidecar-memory-<time>.json``. The target is a peak under
100 MiB. Needs ``moto[server]`` (in the dev extra). The machine's load shows: when the
proxy cannot keep the rate, the writer's queue grows towards its bound, and so does
its memory; look at the load generator's latency before comparing runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from procs import Children, free_port, wait_for_http, wait_for_port
from upstreams import PREDICT_PATH, REQUEST_BODY

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_MIB = 100.0
BUCKET = "sidecar-bench"


def smaps(pid: int) -> dict[str, int]:
    """Rss and Pss of one process in KiB; empty when it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            out[name] = int(rest.split()[0])
    return out


def mappings(pid: int, top: int = 8) -> list[tuple[str, float]]:
    """The mappings holding most of a process's PSS (MiB): where its memory is."""
    totals: dict[str, int] = {}
    current = "?"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if fields and "-" in fields[0] and ":" not in fields[0]:
            current = fields[5].rsplit("/", 1)[-1] if len(fields) > 5 else "[anon]"
        elif fields and fields[0] == "Pss:":
            totals[current] = totals.get(current, 0) + int(fields[1])
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return [(name, mib(kib)) for name, kib in ranked]


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def descendants(pid: int) -> list[int]:
    """The proxy's writer side: the writer, and with ``writer_start: fork`` the fork
    server it was forked from (the writer's parent). All of it is the pod's."""
    found = []
    for child in children_of(pid):
        found += [child, *descendants(child)]
    return found


def the_writer(proxy: int) -> int | None:
    """The writer itself: the descendant without children of its own."""
    leaves = [pid for pid in descendants(proxy) if not children_of(pid)]
    return leaves[0] if leaves else None


class Sampler(threading.Thread):
    """Samples (proxy, writer) memory every ``interval_s`` until stopped."""

    def __init__(self, proxy: int, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.proxy = proxy
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.samples.append(snapshot(self.proxy))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def snapshot(proxy: int) -> dict[str, Any]:
    """PSS and RSS of the proxy and of its writer side (writer plus fork server: PSS
    adds up, RSS is the writer's own, as the pages it maps are shared with the others)."""
    own = smaps(proxy)
    side = [smaps(pid) for pid in descendants(proxy)]
    writer = the_writer(proxy)
    return {
        "t": time.monotonic(),
        "proxy_pss": own.get("Pss", 0),
        "proxy_rss": own.get("Rss", 0),
        "writer_pss": sum(one.get("Pss", 0) for one in side),
        "writer_rss": smaps(writer).get("Rss", 0) if writer else 0,
        "processes": 1 + len(side),
    }


def mib(kib: float) -> float:
    return round(kib / 1024.0, 1)


def start_s3(children: Children) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    wait_for_port(port, children.start("s3", argv))
    endpoint = f"http://127.0.0.1:{port}"
    # A plain PUT (moto checks no signature): with pyarrow imported here, this harness
    # would share Arrow's library pages with the writer and halve their PSS.
    request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
    return endpoint


def start_upstream(children: Children, name: str) -> str:
    port = free_port()
    argv = [sys.executable, str(HERE / "upstreams.py"), "fast", "--port", str(port)]
    wait_for_port(port, children.start(name, argv))
    return f"http://127.0.0.1:{port}"


def proxy_config(
    workdir: Path, endpoint: str, production: str, shadow: str, recording: dict[str, Any]
) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    route = {
        "name": "bench",
        "match": {"path_prefix": "/v1/models/bench"},
        "production": {"url": production, "timeout_s": 5},
        "shadows": [{"name": "healthy", "url": shadow, "timeout_s": 1, "sample_rate": 1.0}],
    }
    main = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "routes": [route],
        "recording": {"dir": f"s3://{BUCKET}/sidecar", "endpoint_url": endpoint, **recording},
    }
    path = workdir / "shadowproxy.yaml"
    path.write_text(yaml.safe_dump(main))
    return path, port, admin


def run(rate: float, duration: float, workdir: Path, recording: dict[str, Any]) -> dict[str, Any]:
    env = {
        **dict(__import__("os").environ),
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with Children(workdir) as children:
        endpoint = start_s3(children)
        production = start_upstream(children, "production")
        shadow = start_upstream(children, "shadow")
        config, port, admin = proxy_config(workdir, endpoint, production, shadow, recording)
        argv = [sys.executable, "-m", "shadowproxy", "serve", "--config", str(config)]
        proxy = children.start("proxy", argv, env=env)
        wait_for_http(f"http://127.0.0.1:{admin}/readyz", proxy)
        time.sleep(2.0)
        idle = snapshot(proxy.pid)
        sampler = Sampler(proxy.pid)
        sampler.start()
        load = [
            sys.executable, str(HERE / "loadgen.py"), f"http://127.0.0.1:{port}{PREDICT_PATH}",
            "--rate", str(rate), "--duration", str(duration), "--body", REQUEST_BODY,
        ]  # fmt: skip
        result = json.loads(children.run("loadgen", load, timeout_s=duration + 60))
        held = mappings(the_writer(proxy.pid) or proxy.pid)
        time.sleep(recording.get("flush_interval_s", 5.0) + 1.0)  # the last file is written
        sampler.stop()
    threaded = recording.get("writer") == "thread"
    under_load = [s for s in sampler.samples if s["writer_pss"] or threaded]
    totals = [s["proxy_pss"] + s["writer_pss"] for s in under_load]
    return {
        "recording": recording,
        "rate": rate,
        "duration_s": duration,
        "idle": {k: mib(v) for k, v in idle.items() if k not in ("t", "processes")},
        "processes": idle["processes"],
        "pss_total_mib": {"median": mib(statistics.median(totals)), "peak": mib(max(totals))},
        "proxy_pss_peak_mib": mib(max(s["proxy_pss"] for s in under_load)),
        "writer_pss_peak_mib": mib(max(s["writer_pss"] for s in under_load)),
        "proxy_rss_peak_mib": mib(max(s["proxy_rss"] for s in under_load)),
        "writer_rss_peak_mib": mib(max(s["writer_rss"] for s in under_load)),
        "loadgen": {
            k: result.get(k) for k in ("rps", "ok", "status_errors", "socket_errors", "latency_ms")
        },
        "writer_mappings_after_load_mib": held,
        "pass": mib(max(totals)) < TARGET_MIB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--writer", choices=("process", "thread"), default="process")
    parser.add_argument("--writer-start", choices=("fork", "spawn"), default="fork")
    parser.add_argument("--flush-interval", type=float, default=5.0, help="flush_interval_s")
    parser.add_argument("--max-buffer-bytes", type=int, default=None, help="max_buffer_bytes")
    args = parser.parse_args()
    recording: dict[str, Any] = {
        "writer": args.writer,
        "writer_start": args.writer_start,
        "flush_interval_s": args.flush_interval,
    }
    if args.max_buffer_bytes is not None:
        recording["max_buffer_bytes"] = args.max_buffer_bytes
    with tempfile.TemporaryDirectory(prefix="sidecar-memory-") as directory:
        summary = run(args.rate, args.duration, Path(directory), recording)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"sidecar-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=2))
    total = summary["pss_total_mib"]
    print(
        f"{args.rate:.0f} req/s for {args.duration:.0f} s, writer {args.writer} "
        f"({args.writer_start}), flush every "
        f"{args.flush_interval:g} s: proxy + writer PSS median "
        f"{total['median']} MiB, peak {total['peak']} MiB (target < {TARGET_MIB:.0f}); "
        f"peaks: proxy {summary['proxy_pss_peak_mib']} MiB, writer "
        f"{summary['writer_pss_peak_mib']} MiB PSS ({summary['writer_rss_peak_mib']} MiB RSS); "
        f"idle {summary['idle']}"
    )
    print(json.dumps(summary["loadgen"]))
    print("writer after the load, PSS by mapping (MiB):", summary["writer_mappings_after_load_mib"])
    print(out)
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
