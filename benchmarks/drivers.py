"""Running one load against one URL: wrk for maximum throughput, loadgen for fixed rates.

Both answer the same normalized dict::

    {"tool": "wrk" | "loadgen", "rps": 2xx answers per second, "ok": ..., "errors": ...,
     "p50_ms": ..., "p99_ms": ..., "keeping_up": True | False | None, "why_not": ...,
     "raw": what the tool printed, parsed}

wrk is closed loop (each connection waits for its answer before sending again), which
is right for "how many requests per second at most" and wrong for latency at a given
rate; fixed-rate runs therefore always use ``loadgen.py`` in open-loop mode.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import Children
from upstreams import PREDICT_PATH, REQUEST_BODY

HERE = Path(__file__).resolve().parent
LOADGEN_GRACE_S = 3.0
"""How long loadgen waits for late answers after a fixed-rate run."""
WRK_TIMEOUT_S = 5


@dataclass(frozen=True)
class Load:
    name: str
    connections: int
    rate: float = 0.0
    """Requests per second; 0 = as many as the system answers (closed loop)."""

    @property
    def label(self) -> str:
        if self.rate:
            return f"{self.rate:,.0f} req/s"
        return f"max, {self.connections} conns"


LOADS = {
    "c16": Load("c16", 16),
    "c64": Load("c64", 64),
    "r500": Load("r500", 64, 500.0),
    "r1500": Load("r1500", 64, 1500.0),
}


def run_load(
    children: Children, load: Load, base_url: str, duration_s: float, wrk: str | None
) -> dict[str, Any]:
    url = base_url + PREDICT_PATH
    if load.rate == 0 and wrk is not None:
        return _run_wrk(children, wrk, load, url, duration_s)
    return _run_loadgen(children, load, url, duration_s)


# --- wrk ------------------------------------------------------------------------------

WRK_SCRIPT = """wrk.method = "POST"
wrk.body = [=[{body}]=]
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_script(workdir: Path) -> Path:
    path = workdir / "post.lua"
    if not path.exists():
        path.write_text(WRK_SCRIPT.format(body=REQUEST_BODY))
    return path


def _run_wrk(
    children: Children, wrk: str, load: Load, url: str, duration_s: float
) -> dict[str, Any]:
    seconds = max(1, round(duration_s))  # wrk takes whole seconds
    argv = [
        wrk,
        "-t1",
        f"-c{load.connections}",
        f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(wrk_script(children.workdir)),
        url,
    ]
    out = children.run("wrk", argv, timeout_s=seconds + WRK_TIMEOUT_S + 15)
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's output (with our ``done`` hook) -> the normalized result."""
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    ok = raw["requests"] - raw["status"]
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "tool": "wrk",
        "rps": round(ok / (raw["duration_us"] / 1e6), 1),
        "ok": ok,
        "errors": raw["status"] + socket_errors,
        "p50_ms": raw["p50_us"] / 1000.0,
        "p99_ms": raw["p99_us"] / 1000.0,
        "keeping_up": None,
        "why_not": None,
        "raw": raw,
    }


# --- loadgen --------------------------------------------------------------------------


def _run_loadgen(children: Children, load: Load, url: str, duration_s: float) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(HERE / "loadgen.py"),
        url,
        f"--rate={load.rate:g}",
        f"--duration={duration_s:g}",
        f"--connections={load.connections}",
        f"--grace={LOADGEN_GRACE_S:g}",
        f"--body={REQUEST_BODY}",
    ]
    out = children.run("loadgen", argv, timeout_s=duration_s + LOADGEN_GRACE_S + 20)
    return normalize_loadgen(json.loads(out))


def normalize_loadgen(raw: dict[str, Any]) -> dict[str, Any]:
    errors = raw["status_errors"] + raw["socket_errors"] + raw["unfinished"]
    return {
        "tool": "loadgen",
        "rps": raw["rps"],
        "ok": raw["ok"],
        "errors": errors,
        "p50_ms": raw["latency_ms"]["p50"],
        "p99_ms": raw["latency_ms"]["p99"],
        "keeping_up": raw.get("keeping_up"),
        "why_not": raw.get("why_not"),
        "raw": raw,
    }
