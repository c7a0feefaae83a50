"""Processes on loopback for the interop tier: third-party servers, the real CLI proxy,
and reading back what it recorded.

Everything here is synchronous so module- and session-scoped fixtures can share one
slow peer (MLServer, Spark) between tests without an event loop per scope.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from shadowproxy.recording import read_dataset
from tests.support import free_port, write_config

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_SCRIPT = Path(__file__).with_name("upstream.py")


def module_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Peer:
    """A child process whose output goes to a log file, named in every failure."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def failure(self, what: str) -> str:
        return f"{self.name}: {what}; last lines of {self.log}:\n{_tail(self.log)}"

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start(
    name: str,
    args: Sequence[str],
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Peer:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd or REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Peer(name, process, log)


def wait_until(peer: Peer, ready: Callable[[], bool], within_s: float, what: str) -> None:
    """Poll ``ready`` until it holds; fail early, with the log, when the peer exits."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            raise AssertionError(
                peer.failure(f"exited with {peer.process.returncode} before {what}")
            )
        if ready():
            return
        time.sleep(0.1)
    raise AssertionError(peer.failure(f"not {what} within {within_s} s"))


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    return check


def listening(port: int) -> Callable[[], bool]:
    import socket

    def check() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    return check


@contextlib.contextmanager
def loopback_upstream(directory: Path, name: str, perturb: float = 0.0) -> Iterator[str]:
    """``upstream.py`` as its own process (the proxy and it never share an event loop)."""
    port = free_port()
    args = [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port), "--name", name]
    peer = start(f"upstream {name}", [*args, "--perturb", str(perturb)], directory / f"{name}.log")
    try:
        wait_until(peer, listening(port), 30, "listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        peer.stop(5)


@dataclass
class Proxy:
    """``shadowproxy serve`` as users run it, with its recording root."""

    url: str
    admin_url: str
    root: Path
    peer: Peer

    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = read_dataset(str(self.root)).to_pylist()
        return rows

    def wait_rows(self, request_ids: Sequence[str], within_s: float = 20.0) -> list[dict[str, Any]]:
        """The recorded rows of these requests, once the writer has closed their files."""
        wanted = set(request_ids)
        deadline = time.monotonic() + within_s
        while True:
            found = [r for r in self.rows() if r["request_id"] in wanted]
            if {r["request_id"] for r in found} == wanted:
                return found
            if time.monotonic() > deadline:
                missing = sorted(wanted - {r["request_id"] for r in found})
                raise AssertionError(self.peer.failure(f"no recorded row for {missing[:5]}"))
            time.sleep(0.2)

    def row(self, request_id: str, within_s: float = 20.0) -> dict[str, Any]:
        [row] = self.wait_rows([request_id], within_s)
        return row


@contextlib.contextmanager
def cli_proxy(directory: Path, routes: list[dict[str, Any]], **main: Any) -> Iterator[Proxy]:
    """Start the real CLI proxy on free ports; on exit SIGTERM it and require exit 0,
    so every row is flushed to Parquet before the caller reads the recording."""
    directory.mkdir(parents=True, exist_ok=True)
    port, admin = free_port(), free_port()
    main = {"recording": {"dir": str(directory / "shadow-logs"), "flush_interval_s": 0.2}, **main}
    config = write_config(
        directory, routes, listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}", **main
    )
    args = [sys.executable, "-m", "shadowproxy", "serve", "--config", str(config)]
    peer = start("shadowproxy serve", args, directory / "proxy.log", cwd=directory)
    proxy = Proxy(
        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", directory / "shadow-logs", peer
    )
    try:
        wait_until(peer, http_ok(f"{proxy.admin_url}/readyz"), 60, "ready")
        yield proxy
    finally:
        code = peer.stop(60)
    assert code == 0, peer.failure(f"exit code {code}")


def report(root: Path, out: Path, *args: str) -> dict[str, Any]:
    """``shadowproxy report`` as a subprocess; its summary.json."""
    import json

    command = [sys.executable, "-m", "shadowproxy", "report", str(root), "--json", str(out), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=root.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def require(executable: str) -> str:
    """The path of a system tool, or a skip that says which apt package brings it."""
    import pytest

    path = shutil.which(executable)
    if path is None:
        packages = {"java": "default-jdk-headless", "javac": "default-jdk-headless", "curl": "curl"}
        pytest.skip(
            f"{executable} not on PATH (apt-get install {packages.get(executable, executable)})"
        )
    return path


def table_types(table: pa.Table) -> dict[str, pa.DataType]:
    return {field.name: field.type for field in table.schema}
