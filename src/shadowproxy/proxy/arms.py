"""Experiment routes at run time: who answers each request, and the canary's controller.

``shadowproxy.experiments`` holds the pure rules (assignment, guardrails, the canary
state machine). This module puts them on the request path: an ``Assigner`` picks, per
request and without I/O, the upstream that answers it (an A/B arm, the canary's
candidate, or production) and is told how the answer went; the ``CanaryController``
evaluates the canary's window once a second off the request path, applies and logs
each decision, and keeps the state in a small JSON file so a restart resumes it.

The disagreement guardrail compares the candidate with production on a sample::

    candidate answers ─► tee: copy to production (shadow ``production``, sampled at the
                         guardrail's sample_rate) ─► Pair(candidate's answer, production's)
    writer: compare ─► verdict counts per (route, shadow) ─► sink.verdict_counts()
    controller, each tick: counts now - counts at the last tick ─► window.record_comparisons

Verdicts reach the window late (the writer's batch and status periods, under a second
by default): those on answers given just before a step change count towards the new
step. A known approximation, small next to the evidence a step needs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shadowproxy.config import RouteConfig, ShadowConfig
from shadowproxy.experiments.assign import assign_arm, in_canary
from shadowproxy.experiments.canary import Canary, CanaryActionError, Decision, state_path
from shadowproxy.experiments.spec import CHECK_SHADOW, ABSpec, CanarySpec
from shadowproxy.experiments.window import Side
from shadowproxy.http.client import Pool
from shadowproxy.metrics import Metrics
from shadowproxy.records import VerdictCounts
from shadowproxy.tasks import TaskSet

log = logging.getLogger(__name__)

EVALUATE_EVERY_S = 1.0
ALARMING = ("rollback", "pause")
"""Canary decisions logged as warnings; a step forward is logged at INFO."""
PRODUCTION_ARM = "production"
"""The arm name recorded when production answered (outside an A/B share, or the
canary's non-candidate side)."""

CHECK_MAX_IN_FLIGHT = 64
"""Copies to production for the disagreement guardrail in flight per canary route;
beyond it they are dropped and counted like any shadow's."""

__all__ = ["CanaryActionError"]


def check_shadow(route: RouteConfig) -> ShadowConfig | None:
    """The disagreement guardrail's copies to production, as a shadow of the route that
    only candidate-served requests reach; None without that guardrail.

    Its role is ``candidate``: its rows measure the candidate (their production columns
    hold the candidate's answer), so they must not count as a noise-floor baseline.
    """
    guardrail = route.canary.disagreement if route.canary is not None else None
    if guardrail is None:
        return None
    return ShadowConfig(
        name=CHECK_SHADOW,
        url=route.production.url,
        sample_rate=guardrail.sample_rate,
        timeout_s=route.production.timeout_s,
        max_in_flight=CHECK_MAX_IN_FLIGHT,
        role="candidate",
    )


def verdict_delta(seen: tuple[int, int], now: tuple[int, int]) -> tuple[int, int]:
    """(agreed, disagreed) judged between two reads of cumulative counts. Counts that
    went down were reset (a sink counting from zero again): all of ``now`` is new."""
    if now[0] < seen[0] or now[1] < seen[1]:
        return now
    return now[0] - seen[0], now[1] - seen[1]


@dataclass(frozen=True, slots=True)
class Arm:
    """An upstream that answers clients on an experiment route."""

    name: str
    pool: Pool
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Choice:
    arm: Arm | None
    """None: production answers."""
    name: str
    """What is recorded and sent back in the arm header."""
    unit: str | None
    """The assignment unit as a hash (the user id itself is never recorded)."""
    share: float | None = None
    """The configured share of the experiment's traffic for this arm (0..1)."""


def unit_of(key: str | None, route: str) -> str | None:
    if key is None:
        return None
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"sp-unit")
    digest.update(route.encode())
    return digest.hexdigest()


class Assigner:
    """Base: the header naming the arm in responses, and how answers are observed."""

    header: str
    route: str

    def choose(self, headers: Mapping[str, str]) -> Choice:
        raise NotImplementedError

    def observe(self, choice: Choice, status: int | None, latency_ms: float) -> None:
        """How the chosen upstream answered (status sent to the client)."""


class ABAssigner(Assigner):
    def __init__(self, route: RouteConfig, spec: ABSpec, arms: dict[str, Arm], metrics: Metrics):
        self.route = route.name
        self.spec = spec
        self.arms = arms
        self.header = spec.arm_header
        self._key_header = spec.key_header
        counter = metrics.experiment_requests
        self._counts = {name: counter.labels(route.name, name) for name in (*arms, PRODUCTION_ARM)}
        total = sum(arm.weight for arm in spec.arms)
        start, end = spec.layer_share
        self._shares = {arm.name: (end - start) * arm.weight / total for arm in spec.arms}
        self._shares[PRODUCTION_ARM] = 1.0 - (end - start)

    def choose(self, headers: Mapping[str, str]) -> Choice:
        key = headers.get(self._key_header) if self._key_header else None
        name = assign_arm(self.spec, self.route, key)
        arm = self.arms.get(name) if name is not None else None
        answered = arm.name if arm is not None else PRODUCTION_ARM
        return Choice(arm, answered, unit_of(key, self.route), self._shares[answered])

    def observe(self, choice: Choice, status: int | None, latency_ms: float) -> None:
        self._counts[choice.name].inc()


class CanaryAssigner(Assigner):
    header = "X-Canary-Arm"

    def __init__(self, route: RouteConfig, candidate: Arm, controller: CanaryController):
        self.route = route.name
        self.candidate = candidate
        self.controller = controller
        assert route.canary is not None
        self._key_header = route.canary.key_header

    def choose(self, headers: Mapping[str, str]) -> Choice:
        key = headers.get(self._key_header) if self._key_header else None
        unit = unit_of(key, self.route)
        share = self.controller.percent / 100.0
        if in_canary(key, self.controller.percent, self.route):
            return Choice(self.candidate, self.candidate.name, unit, share)
        return Choice(None, PRODUCTION_ARM, unit, 1.0 - share)

    def observe(self, choice: Choice, status: int | None, latency_ms: float) -> None:
        # The same rule on both sides: no answer, or a 5xx, is an error.
        error = status is None or status >= 500
        side: Side = "candidate" if choice.arm is not None else "production"
        self.controller.window.record(side, error=error, latency_ms=latency_ms)
        self.controller.count(choice.name)


class CanaryController:
    """One canary route's state machine, its current window and its state file."""

    def __init__(
        self, route: str, spec: CanarySpec, state_dir: str, metrics: Metrics, now: float
    ) -> None:
        self.route = route
        self.spec = spec
        self.path = Path(state_path(state_dir, route))
        self.canary = self._load(now)
        self.window = self.canary.new_window()
        self._metrics = metrics
        self._percent = metrics.canary_percent.labels(route)
        self._counts = {
            name: metrics.experiment_requests.labels(route, name)
            for name in (spec.candidate.name, PRODUCTION_ARM)
        }
        self._tasks = TaskSet()
        self._verdicts: Callable[[], VerdictCounts] | None = None
        self._verdicts_seen = (0, 0)
        self._publish()

    @property
    def percent(self) -> float:
        return self.canary.current_percent

    def count(self, arm: str) -> None:
        self._counts[arm].inc()

    def _load(self, now: float) -> Canary:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return Canary(self.spec, now=now)
        except (OSError, orjson.JSONDecodeError) as exc:
            log.error("canary %s: state file %s unreadable (%s); starting over", self.route,
                      self.path, exc)  # fmt: skip
            return Canary(self.spec, now=now)
        try:
            return Canary.from_dict(self.spec, data, now=now)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("canary %s: state file %s refused (%s); starting over", self.route,
                      self.path, exc)  # fmt: skip
            return Canary(self.spec, now=now)

    def adopt(self, spec: CanarySpec, now: float) -> None:
        """A reload changed the canary block: keep the history, apply the new spec."""
        self.spec = spec
        self.canary = Canary.from_dict(spec, self.canary.to_dict(), now=now)
        self.window = self.canary.new_window()
        self._save()
        self._publish()

    def start(self, verdicts: Callable[[], VerdictCounts] | None = None) -> None:
        """Evaluate every ``EVALUATE_EVERY_S``; ``verdicts`` (the sink's cumulative
        comparison counts) feeds the disagreement guardrail."""
        self._verdicts = verdicts
        if verdicts is not None:
            self._verdicts_seen = self._read_verdicts(verdicts)
        elif self.spec.disagreement is not None:
            log.warning(
                "canary %s: the recorder does not report comparison verdicts, so the "
                "disagreement guardrail stays undecided (and holds the canary)",
                self.route,
            )
        self._tasks.spawn(self._run(), name=f"canary:{self.route}")

    async def stop(self) -> None:
        await self._tasks.drain(0)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(EVALUATE_EVERY_S)
            try:
                self.tick(time.time())
            except Exception:
                # One bad evaluation must not end the watch: the guardrails stay on.
                log.exception("canary %s: evaluation failed; trying again", self.route)

    def tick(self, now: float) -> Decision:
        self._take_verdicts()
        decision = self.canary.evaluate(now, self.window)
        if decision.action != "hold":
            self._decided(decision)
        return decision

    def _take_verdicts(self) -> None:
        """Add the check's verdicts since the last tick to the window."""
        if self._verdicts is None:
            return
        counts = self._read_verdicts(self._verdicts)
        agreed, disagreed = verdict_delta(self._verdicts_seen, counts)
        self._verdicts_seen = counts
        if agreed or disagreed:
            self.window.record_comparisons(agreed, disagreed)

    def _read_verdicts(self, verdicts: Callable[[], VerdictCounts]) -> tuple[int, int]:
        return verdicts().get((self.route, CHECK_SHADOW), (0, 0))

    def act(self, action: str, by: str, note: str | None = None) -> Decision:
        decision = self.canary.act(action, now=time.time(), by=by, note=note)
        self._decided(decision)
        return decision

    def _decided(self, decision: Decision) -> None:
        # A step forward is the canary working as planned; a rollback or a pause is what
        # an operator must see.
        level = logging.WARNING if decision.action in ALARMING else logging.INFO
        log.log(level, "canary %s: %s", self.route, decision.describe())
        self._metrics.canary_decisions.labels(self.route, decision.action).inc()
        if self.window.epoch != self.canary.epoch:
            self.window = self.canary.new_window()
        self._save()
        self._publish()

    def _publish(self) -> None:
        self._percent.set(self.percent)

    def _save(self) -> None:
        """Atomically: a crash mid-write leaves the previous state, never half of one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_bytes(orjson.dumps(self.canary.to_dict(), option=orjson.OPT_INDENT_2))
            os.replace(temporary, self.path)
        except OSError as exc:
            log.error("canary %s: cannot save state to %s: %s", self.route, self.path, exc)

    def document(self) -> dict[str, Any]:
        """What ``GET /experiments`` shows for this canary."""
        window = self.window
        last = self.canary.last_evaluation
        return {
            "route": self.route,
            "mode": "canary",
            "candidate": self.spec.candidate.name,
            "status": self.canary.status,
            "step": self.canary.step,
            "percent": self.percent,
            "window": {
                "candidate": {
                    "requests": window.candidate.requests,
                    "errors": window.candidate.errors,
                },
                "production": {
                    "requests": window.production.requests,
                    "errors": window.production.errors,
                },
                "compared": window.compared,
                "disagreed": window.disagreed,
            },
            "last_evaluation": last.to_dict() if last is not None else None,
            "decisions": [decision.to_dict() for decision in self.canary.decisions[-20:]],
            "state_file": str(self.path),
        }
