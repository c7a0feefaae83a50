"""The soak's sampler: once a second, the proxy's and its writer's memory and open fds.

Runs in a process of its own, because reading ``/proc/net/tcp`` takes milliseconds
(tens with thousands of sockets in TIME_WAIT after a black-holed phase): in the load
generator's event loop that would delay requests and show up as the proxy's latency.

    python benchmarks/soak_sampler.py --pid PROXY --ports LISTEN,PRODUCTION,SHADOW \\
        --t0 T0 --until SECONDS --out samples.jsonl

``t0`` is on ``time.perf_counter``'s clock (CLOCK_MONOTONIC on Linux, the same in every
process). One sample right away (before the load, negative ``t_s``), then one at every
whole second after ``t0`` before ``until``; one JSON object per line.

The proxy's fds are sorted by what they are: client connections (local port = the
proxy's listen port), production and shadow connections (remote port), and the rest
(listeners, the writer's pipes, the event loop's own), matched through
``/proc/net/tcp``. The writer is the proxy's child in its process group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from procs import group_pids


@dataclass(frozen=True)
class Ports:
    """What the proxy's sockets are, by port: clients connect to ``listen``, the proxy
    connects to ``production`` and ``shadow``."""

    listen: int
    production: int
    shadow: int


@dataclass(frozen=True)
class Sample:
    t_s: float
    """Seconds since the load started; the first sample, before it, is negative."""
    proxy_rss_kib: int
    writer_rss_kib: int
    proxy_fds: int
    client_conns: int
    production_conns: int
    shadow_conns: int
    writer_fds: int
    writer_pids: tuple[int, ...]

    @property
    def other_fds(self) -> int:
        """The proxy's fds that are no upstream or client connection: listeners, the
        writer's pipes, the event loop's own. Flat unless something leaks."""
        return self.proxy_fds - self.client_conns - self.production_conns - self.shadow_conns


def status_kib(pid: int, key: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def socket_inodes(pid: int) -> tuple[int, dict[str, int]]:
    """How many fds ``pid`` has open, and the inode of each that is a socket, by fd."""
    inodes = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0, {}
    for name in names:
        inode = _socket_inode(pid, name)
        if inode is not None:
            inodes[name] = inode
    return len(names), inodes


def _socket_inode(pid: int, fd: str) -> int | None:
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None  # closed meanwhile
    return int(target[8:-1]) if target.startswith("socket:[") else None


def tcp_ports() -> dict[int, tuple[int, int]]:
    """Socket inode -> (local port, remote port), for every TCP socket of this host."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
            ports[int(fields[9])] = (int(local, 16), int(remote, 16))
    return ports


def take_sample(proxy_pid: int, ports: Ports, t_s: float) -> Sample:
    # The writer is the proxy's child in its process group; after a restart, a new pid.
    writers = tuple(pid for pid in group_pids(proxy_pid) if pid != proxy_pid)
    fds, inodes = socket_inodes(proxy_pid)
    table = tcp_ports()
    if any(inode not in table for inode in inodes.values()):
        table = tcp_ports()  # a connection caught between socket() and connect()
    # A connection closed between listing the fds and reading the table is gone: not
    # counted, or it would land in "other", which must stay flat. (Sockets that are not
    # TCP, such as the event loop's own, do stay in "other".)
    for fd, inode in inodes.items():
        if inode not in table and _socket_inode(proxy_pid, fd) != inode:
            fds -= 1
    kinds = Counter(_kind(table.get(inode), ports) for inode in inodes.values())
    return Sample(
        t_s=round(t_s, 3),
        proxy_rss_kib=status_kib(proxy_pid),
        writer_rss_kib=sum(status_kib(pid) for pid in writers),
        proxy_fds=fds,
        client_conns=kinds["client"],
        production_conns=kinds["production"],
        shadow_conns=kinds["shadow"],
        writer_fds=sum(socket_inodes(pid)[0] for pid in writers),
        writer_pids=writers,
    )


def _kind(local_remote: tuple[int, int] | None, ports: Ports) -> str:
    if local_remote is None:
        return "other"
    local, remote = local_remote
    if local == ports.listen and remote != 0:
        return "client"
    if remote == ports.production:
        return "production"
    if remote == ports.shadow:
        return "shadow"
    return "other"


def read_samples(path: Path) -> list[Sample]:
    samples = []
    for line in path.read_text().splitlines():
        fields = json.loads(line)
        samples.append(Sample(**fields | {"writer_pids": tuple(fields["writer_pids"])}))
    return samples


def moments(t0: float, until_s: float) -> Iterator[float]:
    """Now, then each whole second after ``t0`` before ``until_s`` (sleeping in between);
    as seconds since ``t0``."""
    yield time.perf_counter() - t0
    tick = 1
    while tick < until_s:
        time.sleep(max(0.0, t0 + tick - time.perf_counter()))
        yield time.perf_counter() - t0
        tick += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sample the proxy under soak.")
    parser.add_argument("--pid", type=int, required=True, help="the proxy's pid")
    parser.add_argument("--ports", required=True, help="listen,production,shadow")
    parser.add_argument("--t0", type=float, required=True, help="the load's start, perf_counter")
    parser.add_argument("--until", type=float, required=True, help="seconds after t0")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    ports = Ports(*(int(port) for port in args.ports.split(",")))
    with args.out.open("w") as out:
        for t_s in moments(args.t0, args.until):
            sample = take_sample(args.pid, ports, t_s)
            out.write(json.dumps(asdict(sample)) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
