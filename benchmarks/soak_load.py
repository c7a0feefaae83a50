"""The soak's load: a fixed rate through phases, the shadow switched when each starts.

The plan splits ``duration_s`` into phases, each a mode of the shadow (``healthy``,
``slow``, ``blackhole``). ``drive`` runs loadgen's open-loop schedule (request *i* due
at ``t0 + i/rate``, latency counted from the due time) on ``connections`` keep-alive
connections and switches the shadow's mode when a phase starts. Each request carries
its phase in the query string (``?soak_phase=N``), which every recorded row keeps, so
rows are attributed to phases exactly. Sampling ``/proc`` is another process's job
(``soak_sampler.py``): this event loop does nothing but the load.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import math
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

import loadgen
from loadgen import Connection, Target, build_target, clock, dispatch, supervise
from soak_sampler import Ports, status_kib
from soak_upstream import MODES
from upstreams import PREDICT_PATH, REQUEST_BODY

SHADOW_MAX_IN_FLIGHT = 128
"""Above the slow phase's need at 500 req/s (500 x 0.2 s = 100 copies in flight), so a
slow shadow is answered; a black hole fills it and the rest is dropped (counted)."""
GRACE_S = 5.0
"""After the schedule, how long late answers are waited for."""
MIB = 1024.0


# --- the plan (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    index: int
    mode: str
    start_s: float
    end_s: float

    @property
    def name(self) -> str:
        return f"{self.index + 1} {self.mode}"


def parse_phases(spec: str, duration_s: float) -> tuple[Phase, ...]:
    """``healthy,blackhole=2,...`` -> phases splitting ``duration_s`` by weight (default 1)."""
    parts: list[tuple[str, float]] = []
    for item in spec.split(","):
        mode, _, given = item.strip().partition("=")
        if mode not in MODES:
            raise ValueError(f"phase {mode!r}: expected one of {', '.join(MODES)}")
        parts.append((mode, float(given) if given else 1.0))
    total = sum(weight for _, weight in parts)
    if not parts or total <= 0 or any(weight <= 0 for _, weight in parts):
        raise ValueError(f"phases {spec!r}: weights must be positive")
    phases, start = [], 0.0
    for index, (mode, weight) in enumerate(parts):
        end = start + duration_s * weight / total
        phases.append(Phase(index, mode, start, end))
        start = end
    return tuple(phases)


@dataclass(frozen=True)
class Plan:
    rate: float
    duration_s: float
    phases: tuple[Phase, ...]
    warmup_s: float
    rss_bound_mib: float
    fd_tolerance: int
    connections: int
    flush_interval_s: float
    breaker: bool
    slow_ms: float
    max_in_flight: int = SHADOW_MAX_IN_FLIGHT
    """The shadow's bound on copies in flight, which is also its connection bound."""

    @property
    def total(self) -> int:
        return int(self.rate * self.duration_s)

    def first_request(self, phase: Phase) -> int:
        """Index of the first request due in ``phase`` (request i is due at i / rate)."""
        # Phase bounds are sums of floats: 0.1 * 3 must not land just above 0.3.
        return min(self.total, math.ceil(round(phase.start_s * self.rate, 6)))

    def scheduled(self, phase: Phase) -> int:
        """Requests due within ``phase``."""
        following = self.phases[phase.index + 1] if phase.index + 1 < len(self.phases) else None
        end = self.total if following is None else self.first_request(following)
        return end - self.first_request(phase)

    @functools.cached_property
    def _firsts(self) -> tuple[int, ...]:
        return tuple(self.first_request(phase) for phase in self.phases)

    def phase_of_request(self, index: int) -> int:
        return max(0, bisect.bisect_right(self._firsts, index) - 1)

    def phase_at(self, t_s: float) -> int:
        """The phase a moment (seconds since the start) belongs to."""
        starts = [phase.start_s for phase in self.phases]
        return max(0, bisect.bisect_right(starts, t_s) - 1)


# --- load, phases and /proc samples (async, this process) -----------------------------


@dataclass
class PhaseLoad:
    """What the load generator saw for the requests due in one phase; times in seconds."""

    latencies: list[float] = field(default_factory=list)
    answered: int = 0
    status_errors: int = 0
    socket_errors: int = 0

    def record(self, due: float, sent: float, done: float, status: int) -> None:
        # From the due time, as loadgen counts it: no coordinated omission.
        self.latencies.append(done - min(due, sent))
        if 200 <= status < 300:
            self.answered += 1
        else:
            self.status_errors += 1


@dataclass
class Driven:
    loads: list[PhaseLoad]
    lags: list[float]
    late_s: float
    generator_cpu_share: float


def http(url: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    with urllib.request.urlopen(request, timeout=5.0) as response:
        body: bytes = response.read()
        return body


async def switch_phases(plan: Plan, control: str, t0: float, proxy_pid: int) -> None:
    for phase in plan.phases:
        await asyncio.sleep(max(0.0, t0 + phase.start_s - clock()))
        await asyncio.to_thread(http, f"{control}/_soak/mode/{phase.mode}", "POST")
        print(
            f"[{clock() - t0:6.1f} s] phase {phase.name} for {phase.end_s - phase.start_s:g} s; "
            f"proxy RSS {status_kib(proxy_pid) / MIB:.1f} MiB",
            flush=True,
        )


async def worker(
    plan: Plan,
    t0: float,
    targets: Sequence[Target],
    queue: asyncio.Queue[float | None],
    loads: list[PhaseLoad],
) -> None:
    """loadgen's worker, with the request (and the tally) chosen by the phase it is due in."""
    conn: Connection | None = None
    while (due := await queue.get()) is not None:
        phase = plan.phase_of_request(round((due - t0) * plan.rate))
        load = loads[phase]
        try:
            if conn is None or conn.closed:
                conn = await reconnect(targets[phase])
            sent = clock()
            head = await conn.request(targets[phase].request)
        except (OSError, loadgen.ProtocolError, ValueError):
            load.socket_errors += 1
            conn = None
            continue
        load.record(due, sent, clock(), head.status)
        if not head.keep_alive:
            conn.close()
    if conn is not None:
        conn.close()


async def reconnect(target: Target) -> Connection:
    try:
        return await loadgen.connect(target)
    except OSError:
        await asyncio.sleep(loadgen.RECONNECT_BACKOFF_S)
        raise


async def drive(plan: Plan, t0: float, ports: Ports, proxy_pid: int) -> Driven:
    """The open-loop load from ``t0`` through every phase, the shadow switched on time."""
    proxy, control = f"http://127.0.0.1:{ports.listen}", f"http://127.0.0.1:{ports.shadow}"
    # The phase travels in the query string, which every recorded row keeps.
    targets = [
        build_target(
            f"{proxy}{PREDICT_PATH}?soak_phase={phase.index}", "POST", REQUEST_BODY.encode()
        )
        for phase in plan.phases
    ]
    await loadgen.check_listening(targets[0])
    queue: asyncio.Queue[float | None] = asyncio.Queue(maxsize=plan.total + plan.connections)
    loads = [PhaseLoad() for _ in plan.phases]
    lags: list[float] = []
    late = 0.0

    async def feed() -> None:
        nonlocal late
        late = await dispatch(queue, plan.rate, t0, plan.total, lags) - (t0 + plan.duration_s)
        for _ in range(plan.connections):
            queue.put_nowait(None)

    cpu_before = loadgen.cpu_seconds()
    async with asyncio.TaskGroup() as group:
        group.create_task(switch_phases(plan, control, t0, proxy_pid))
        workers = [worker(plan, t0, targets, queue, loads) for _ in range(plan.connections)]
        await supervise(workers, feed(), t0 + plan.duration_s + GRACE_S)
    cpu_share = (loadgen.cpu_seconds() - cpu_before) / plan.duration_s
    return Driven(loads, lags, late, cpu_share)
