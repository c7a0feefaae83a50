"""Child processes of the benchmarks, and what /proc says about them.

Every child runs in its own session (process group), so a Ctrl-C in the terminal
reaches only the harness, which then stops its children in order: SIGTERM to the whole
group, a grace period, SIGKILL to the group. On Linux each child also gets
``PR_SET_PDEATHSIG``, so even a harness killed with SIGKILL takes its children (and,
through the group signal nginx's master sends, nginx's workers) with it.

Usage::

    with Children(workdir) as children:
        nginx = children.start("nginx", ["nginx", "-c", conf])
        wait_for_port(port, nginx)
        ...
    # every child is gone here, whatever happened inside the block
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

STOP_GRACE_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """A child exited early or never became ready; the message quotes its log."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """Starts children with their output in ``workdir``; stops all of them on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=env,
            )
        child = Child(name, popen, log)
        self._children.append(child)
        return child

    def running(self) -> list[Child]:
        return list(self._children)

    def run(self, name: str, argv: Sequence[str], timeout_s: float) -> str:
        """Run a child to completion and return its stdout (stderr goes to its log)."""
        log = self.workdir / f"{name}.log"
        with log.open("ab") as err:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, log)
        self._children.append(child)
        try:
            out, _ = popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise ChildFailed(f"{name} did not finish within {timeout_s:.0f}s") from exc
        finally:
            self.stop(child)
        if popen.returncode != 0:
            raise ChildFailed(f"{name} exited with {popen.returncode}:\n{child.log_tail()}")
        return out.decode()

    def stop(self, child: Child) -> None:
        _stop_groups([child])
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        # Signals are blocked meanwhile: a second Ctrl-C must not leave orphans behind.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            _stop_groups(list(reversed(self._children)))
            self._children.clear()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_groups(children: list[Child]) -> None:
    """SIGTERM each child's group, wait, SIGKILL the groups still alive, reap."""
    for child in children:
        if child.alive():
            _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Also after the leader exited: nginx workers or helpers may linger in the group.
        _signal_group(child, signal.SIGKILL)
        child.popen.wait()


def _signal_group(child: Child, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


# --- ports and readiness ---------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def refused_port() -> tuple[socket.socket, int]:
    """A port that refuses connections for as long as the returned socket stays open.

    The socket is bound but never listens, so connecting gets RST at once (a shadow
    that is down), and the port cannot be handed to anything else meanwhile.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def wait_for_port(port: int, child: Child, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_alive(child)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ChildFailed(f"{child.name}: port {port} not open after {timeout_s:.0f}s")


def wait_for_http(url: str, child: Child, timeout_s: float = 20.0) -> None:
    """Until ``url`` answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_alive(child)
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise ChildFailed(f"{child.name}: {url} not ready after {timeout_s:.0f}s\n{child.log_tail()}")


def _check_alive(child: Child) -> None:
    if not child.alive():
        raise ChildFailed(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")


# --- /proc -----------------------------------------------------------------------------


def group_pids(leader: int) -> list[int]:
    """The leader and every process in its group (nginx: master and workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) == leader:  # field 5: pgrp
                pids.append(int(entry.name))
    return sorted(pids)


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return ticks / CLOCK_TICKS


def peak_rss_kb(pids: Sequence[int]) -> int:
    """Sum of VmHWM (peak resident set) over the processes, in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()
