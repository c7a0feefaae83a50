"""The systems under test, each started fresh per scenario and round.

* ``direct``: the client talks to the production upstream itself; the limit.
* ``shadowproxy``: ``python -m shadowproxy serve``, one shadow at 100% sampling,
  recording to a temp dir (``recording.dir``). Whether the recorder is wired into
  ``serve`` yet is not the harness's business; it reports whether files appeared.
* ``shadowproxy-norec``: the same proxy through ``serve_without_recording.py``, which
  swaps the recorder for a sink that discards pairs: the cost of recording is the
  difference.
* ``nginx-mirror``: NGINX's ``mirror`` module, one worker (shadowproxy has one event
  loop), keep-alive pools to both upstreams, the mirror timing out like the shadow.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from procs import Child, Children, free_port, group_pids, wait_for_http
from upstreams import Upstreams, nginx_conf, start_nginx

SYSTEMS = ("direct", "shadowproxy", "shadowproxy-norec", "nginx-mirror")
SHADOW_TIMEOUT_S = 1.0
"""The shadow's total timeout, the same for shadowproxy and nginx's mirror location."""

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Running:
    system: str
    url: str
    """Base URL clients send to."""
    pids: tuple[int, ...]
    """The processes whose CPU and memory are measured (none for ``direct``)."""
    recording_dir: Path | None = None


def start_system(
    system: str, scenario: str, upstreams: Upstreams, children: Children, nginx: str | None
) -> Running:
    """Start ``system`` teeing to the shadow of ``scenario``; return once it answers."""
    shadow = upstreams.shadows[scenario]
    if system == "direct":
        return Running(system, upstreams.production, ())
    if system == "nginx-mirror":
        assert nginx is not None
        return _start_nginx_mirror(children, nginx, scenario, upstreams.production, shadow)
    return _start_shadowproxy(children, system, scenario, upstreams.production, shadow)


# --- shadowproxy -----------------------------------------------------------------------


def shadowproxy_config(
    listen: int, admin: int, production: str, shadow: str, recording: Path
) -> dict[str, object]:
    """The main config, routes inline: everything to production, all of it copied."""
    return {
        "listen": f"127.0.0.1:{listen}",
        "admin_listen": f"127.0.0.1:{admin}",
        "recording": {"dir": str(recording)},
        "drain_timeout_s": 2,
        "shutdown_timeout_s": 2,
        "routes": [
            {
                "name": "bench",
                "match": {"path_prefix": "/"},
                "production": {"url": production, "timeout_s": 10},
                "shadows": [
                    {
                        "name": "shadow",
                        "url": shadow,
                        "sample_rate": 1.0,
                        "timeout_s": SHADOW_TIMEOUT_S,
                    }
                ],
            }
        ],
    }


def _start_shadowproxy(
    children: Children, system: str, scenario: str, production: str, shadow: str
) -> Running:
    name = f"{system}-{scenario}"
    listen, admin = free_port(), free_port()
    recording = children.workdir / f"recording-{name}"
    config = children.workdir / f"{name}.yaml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(json.dumps(shadowproxy_config(listen, admin, production, shadow, recording)))
    if system == "shadowproxy":
        argv = [sys.executable, "-m", "shadowproxy", "--log-level", "warning", "serve"]
    else:
        argv = [sys.executable, str(HERE / "serve_without_recording.py")]
    child = children.start(name, [*argv, "--config", str(config)])
    wait_for_http(f"http://127.0.0.1:{admin}/readyz", child)
    # The whole process group: the proxy and its writer process, whose CPU and memory
    # are part of what recording costs (as nginx's figures sum master and workers).
    return Running(system, f"http://127.0.0.1:{listen}", tuple(group_pids(child.pid)), recording)


def recorded_files(running: Running) -> int:
    """How many files the recorder left in its directory (0: not wired, or nothing yet)."""
    root = running.recording_dir
    if root is None or not root.exists():
        return 0
    return sum(1 for path in root.rglob("*") if path.is_file())


# --- nginx mirror ----------------------------------------------------------------------


def mirror_block(port: int, production: str, shadow: str) -> str:
    """The NGINX equivalent of one route with one shadow at 100%."""
    timeout = f"{SHADOW_TIMEOUT_S:g}s"
    return f"""    upstream prod {{
        server {production.removeprefix("http://")};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    upstream shadow {{
        server {shadow.removeprefix("http://")};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            mirror /mirror;
            proxy_pass http://prod;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /mirror {{
            internal;
            proxy_pass http://shadow$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout {timeout};
            proxy_send_timeout {timeout};
            proxy_read_timeout {timeout};
        }}
    }}"""


def _start_nginx_mirror(
    children: Children, nginx: str, scenario: str, production: str, shadow: str
) -> Running:
    name = f"nginx-mirror-{scenario}"
    port = free_port()
    # Error logging at "crit": nginx would otherwise write a line per failed mirror,
    # which shadowproxy does not do; the reference gets its best case.
    conf = nginx_conf(children.workdir / name, mirror_block(port, production, shadow), "crit")
    master = start_nginx(children, nginx, name, conf, port)
    return Running("nginx-mirror", f"http://127.0.0.1:{port}", tuple(group_pids(master)))


def stop_system(children: Children, running: Running) -> None:
    for child in _children_of(children, running):
        children.stop(child)


def _children_of(children: Children, running: Running) -> list[Child]:
    return [child for child in children.running() if child.pid in running.pids]
