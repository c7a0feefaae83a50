"""The canary state machine: what share of traffic the candidate answers, and why.

::

    running ──advance: enough evidence and every guardrail passes──► next step ─► ... ─► completed
     │   ▲                                    (a step of 100% completes on entry:
     │   │ resume                              nothing is left to compare against)
     ▼   │
    paused            a guardrail fails with confidence (running, paused or completed)
                        ──► on_fail: rollback (rolled_back, 0%) or pause
    operator: pause · resume · promote (promoted, 100%) · rollback · reset (rolled_back ─► step 0)

Pure: the caller passes the time in, owns the ``Window`` the proxy records into, and
keeps the state (``to_dict``) in a file. ``evaluate`` only advances with enough evidence:
``step_min_requests`` and ``step_min_duration_s`` on the candidate side, then every
guardrail passing at an advance look, whose level accounts for looking repeatedly
(``advance_level``). It acts on a failure at once, before the step's minimums, because a
failure is only declared when it is shown at ``confidence`` on at least
``guardrail_min_samples`` observations (see ``experiments.guardrails``).

Every decision that changes something is appended to ``decisions`` (the latest
``MAX_DECISIONS``); a ``hold`` only replaces ``last_evaluation``, so a canary evaluated
every few seconds keeps a short, readable history. The caller logs ``Decision.describe()``.

Evidence is per step: whenever the share changes, ``epoch`` increases and the caller
starts a fresh window with ``new_window()`` (``evaluate`` refuses a stale one). Windows
are not part of the saved state: after a restart a step collects its requests again,
while its duration counts from when it started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from shadowproxy.errors import ShadowproxyError
from shadowproxy.experiments.guardrails import GuardrailResult, check
from shadowproxy.experiments.spec import CanarySpec
from shadowproxy.experiments.window import Window

Status = Literal["running", "paused", "rolled_back", "promoted", "completed"]
STATUSES: tuple[Status, ...] = get_args(Status)
Action = Literal["advance", "complete", "hold", "rollback", "pause", "resume", "promote", "reset"]
ACTIONS: tuple[Action, ...] = get_args(Action)
OperatorAction = Literal["pause", "resume", "promote", "rollback", "reset"]
OPERATOR_ACTIONS: tuple[OperatorAction, ...] = get_args(OperatorAction)

AUTO = "auto"
"""``Decision.by`` of the evaluator's own decisions."""
CONFIG = "config"
"""``Decision.by`` of a restart that found a different candidate configured."""
SCHEMA_VERSION = 1
MAX_DECISIONS = 200
"""Decisions kept in the state (the oldest go first); transitions are rare, so this only
bounds a canary that is reset over and over."""

_ALLOWED_FROM: dict[OperatorAction, tuple[Status, ...]] = {
    "pause": ("running",),
    "resume": ("paused",),
    "promote": ("running", "paused", "completed"),
    "rollback": ("running", "paused", "completed", "promoted"),
    "reset": ("rolled_back",),
}
_TARGET: dict[OperatorAction, Status] = {
    "pause": "paused",
    "resume": "running",
    "promote": "promoted",
    "rollback": "rolled_back",
    "reset": "running",
}
_WATCHED: tuple[Status, ...] = ("running", "paused", "completed")
"""States in which the candidate answers a share the canary chose, so guardrails keep
watching it; ``promoted`` is the operator's call and is never undone automatically."""


def state_path(state_dir: str, route: str) -> str:
    """Where a route's canary state (status, step, decisions) is kept: the proxy writes
    it, ``shadowproxy report --config`` reads the decisions back."""
    return f"{state_dir.rstrip('/')}/canary-{route}.json"


class CanaryActionError(ShadowproxyError):
    """An operator action that is unknown or not allowed in the current state (the
    admin endpoint answers 4xx with this message; the state is unchanged)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One outcome of ``evaluate`` or an operator action, with the state it led to."""

    action: Action
    at: float
    by: str
    status: Status
    step: int
    percent: float
    from_percent: float
    reasons: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line: what happened, who did it, where the canary is now and why."""
        move = f"{self.from_percent:g}% -> {self.percent:g}%"
        if self.percent == self.from_percent:
            move = f"at {self.percent:g}%"
        why = "; ".join(self.reasons)
        return f"canary {self.action} by {self.by} ({move}, {self.status}): {why}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "at": self.at,
            "by": self.by,
            "status": self.status,
            "step": self.step,
            "percent": self.percent,
            "from_percent": self.from_percent,
            "reasons": list(self.reasons),
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(
            action=_member(data["action"], ACTIONS, "action"),
            at=float(data["at"]),
            by=str(data["by"]),
            status=_member(data["status"], STATUSES, "status"),
            step=int(data["step"]),
            percent=float(data["percent"]),
            from_percent=float(data["from_percent"]),
            reasons=tuple(str(reason) for reason in data["reasons"]),
            evidence=dict(data["evidence"]),
        )


def _member(value: Any, allowed: tuple[Any, ...], what: str) -> Any:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}")
    return value


def advance_level(confidence: float, look: int) -> float:
    """Level of the bounds at advance look ``look`` (0, 1, 2, ...) of a step.

    Looking again and again at accumulating data would let a candidate outside a limit
    pass by chance far more often than ``1 - confidence``. Looks are taken when the
    candidate's requests first reach ``step_min_requests`` x 1, 2, 4, 8, ... and look k
    gets ``(1 - confidence) / 2^(k+1)`` of the error: a half, a quarter, an eighth. The
    sum stays below ``1 - confidence`` however long the step runs (a union bound), so
    that is the chance that a step is passed by a candidate outside a limit.
    """
    return 1.0 - (1.0 - confidence) / 2.0 ** (look + 1)


class Canary:
    """One route's canary: its status, its step, and the decisions that led there."""

    def __init__(self, spec: CanarySpec, *, now: float) -> None:
        self.spec = spec
        self._status: Status = "running"
        self._step = 0
        self._step_started_at = now
        self._epoch = 0
        self._looks = 0  # advance looks spent in this epoch (see advance_level)
        self._decisions: list[Decision] = []
        self._last_evaluation: Decision | None = None

    # --- state ---------------------------------------------------------------------

    @property
    def status(self) -> Status:
        return self._status

    @property
    def step(self) -> int:
        """Index into ``spec.steps`` (kept through rollback and promote, for the record)."""
        return self._step

    @property
    def step_started_at(self) -> float:
        return self._step_started_at

    @property
    def epoch(self) -> int:
        """Increases whenever the share changes: evidence of one epoch says nothing of the next."""
        return self._epoch

    @property
    def current_percent(self) -> float:
        """The share of traffic the candidate answers now: feed it to ``assign.in_canary``."""
        return self._percent(self._status, self._step)

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return tuple(self._decisions)

    @property
    def last_evaluation(self) -> Decision | None:
        return self._last_evaluation

    def new_window(self) -> Window:
        """An empty window for the current epoch."""
        return Window(self._epoch)

    def _percent(self, status: Status, step: int) -> float:
        if status == "rolled_back":
            return 0.0
        if status == "promoted":
            return 100.0
        return self.spec.steps[step]

    # --- evaluation ----------------------------------------------------------------

    def evaluate(self, now: float, window: Window) -> Decision:
        """Advance, hold or act on a failed guardrail, from ``window`` as of ``now``."""
        decision = self._evaluate(now, window)
        if decision.action == "hold":
            self._last_evaluation = decision
        return decision

    def _evaluate(self, now: float, window: Window) -> Decision:
        if self._status not in _WATCHED:
            return self._hold(
                now, [f"{self._status}: nothing to evaluate until an operator acts"], {}
            )
        if window.epoch != self._epoch:
            stale = f"window of epoch {window.epoch}, canary at {self._epoch}: start a new window"
            return self._hold(now, [stale], {})
        results = self._check(window, self.spec.confidence)
        evidence = self._evidence(now, window, results)
        failed = [result.reason for result in results if result.verdict == "fail"]
        if failed:
            return self._on_fail(now, failed, evidence)
        undecided = [result.reason for result in results if result.verdict != "pass"]
        if self._status != "running":
            return self._hold(now, [f"{self._status}: not advancing", *undecided], evidence)
        missing = self._missing_volume(now, window)
        if missing:
            return self._hold(now, [*missing, *undecided], evidence)
        look = (window.candidate.requests // self.spec.step_min_requests).bit_length() - 1
        if look < self._looks:
            waiting = (
                f"advance looks are at {self._look_at(0)}, {self._look_at(1)}, "
                f"{self._look_at(2)}, ... candidate requests; the next is at "
                f"{self._look_at(self._looks)}"
            )
            return self._hold(now, [waiting, *undecided], evidence)
        return self._look(now, window, look)

    def _look(self, now: float, window: Window, look: int) -> Decision:
        """Spend advance look ``look``: advance if every guardrail passes at its level."""
        level = advance_level(self.spec.confidence, look)
        self._looks = look + 1
        results = self._check(window, level)
        evidence = {**self._evidence(now, window, results), "look": {"index": look, "level": level}}
        not_passed = [result.reason for result in results if result.verdict != "pass"]
        if not_passed:
            heading = f"advance look {look} at {level * 100:.6g}%: not every guardrail passes"
            return self._hold(now, [heading, *not_passed], evidence)
        return self._advance(
            now, [r.reason for r in results] or ["no guardrails configured"], evidence
        )

    def _look_at(self, look: int) -> int:
        return int(self.spec.step_min_requests * 2**look)

    def _check(self, window: Window, level: float) -> list[GuardrailResult]:
        return [
            check(guardrail, window, confidence=level, min_samples=self.spec.guardrail_min_samples)
            for guardrail in self.spec.guardrails
        ]

    def _evidence(
        self, now: float, window: Window, results: list[GuardrailResult]
    ) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "step": self._step,
            "percent": self.current_percent,
            "elapsed_s": round(now - self._step_started_at, 3),
            "candidate_requests": window.candidate.requests,
            "production_requests": window.production.requests,
            "step_min_requests": self.spec.step_min_requests,
            "step_min_duration_s": self.spec.step_min_duration_s,
            "guardrails": [result.evidence for result in results],
        }

    def _missing_volume(self, now: float, window: Window) -> list[str]:
        missing = []
        if window.candidate.requests < self.spec.step_min_requests:
            missing.append(
                f"the candidate has answered {window.candidate.requests} of the "
                f"{self.spec.step_min_requests} requests a step needs"
            )
        elapsed = now - self._step_started_at
        if elapsed < self.spec.step_min_duration_s:
            missing.append(
                f"the step has run {elapsed:.0f} s of {self.spec.step_min_duration_s:g} s"
            )
        return missing

    def _on_fail(self, now: float, reasons: list[str], evidence: dict[str, Any]) -> Decision:
        if self.spec.on_fail == "rollback":
            return self._transition(
                now, "rollback", AUTO, "rolled_back", self._step, reasons, evidence
            )
        if self._status == "paused":
            return self._hold(now, ["paused, and still failing", *reasons], evidence)
        return self._transition(now, "pause", AUTO, "paused", self._step, reasons, evidence)

    def _advance(self, now: float, reasons: list[str], evidence: dict[str, Any]) -> Decision:
        last = len(self.spec.steps) - 1
        if self._step == last:
            return self._transition(now, "complete", AUTO, "completed", last, reasons, evidence)
        step = self._step + 1
        if self.spec.steps[step] >= 100.0:
            reasons = [
                *reasons,
                "100% reached: nothing is left to compare against, the canary is complete",
            ]
            return self._transition(now, "advance", AUTO, "completed", step, reasons, evidence)
        return self._transition(now, "advance", AUTO, "running", step, reasons, evidence)

    def _hold(self, now: float, reasons: list[str], evidence: dict[str, Any]) -> Decision:
        percent = self.current_percent
        return Decision(
            "hold", now, AUTO, self._status, self._step, percent, percent, tuple(reasons), evidence
        )

    # --- operator actions ----------------------------------------------------------

    def act(self, action: str, *, now: float, by: str, note: str | None = None) -> Decision:
        """Apply an operator action (``POST /experiments/<route>/<action>``)."""
        operator_action = next((known for known in OPERATOR_ACTIONS if known == action), None)
        if operator_action is None:
            raise CanaryActionError(
                f"unknown action {action!r}; one of: {', '.join(OPERATOR_ACTIONS)}"
            )
        allowed = _ALLOWED_FROM[operator_action]
        if self._status not in allowed:
            raise CanaryActionError(
                f"cannot {action} a canary that is {self._status} "
                f"(only when {' or '.join(allowed)})"
            )
        step = 0 if operator_action == "reset" else self._step
        reasons = [note] if note else [f"{action} requested by {by}"]
        evidence = {
            "previous": {
                "status": self._status,
                "step": self._step,
                "percent": self.current_percent,
            }
        }
        return self._transition(
            now, operator_action, by, _TARGET[operator_action], step, reasons, evidence
        )

    def pause(self, *, now: float, by: str, note: str | None = None) -> Decision:
        return self.act("pause", now=now, by=by, note=note)

    def resume(self, *, now: float, by: str, note: str | None = None) -> Decision:
        return self.act("resume", now=now, by=by, note=note)

    def promote(self, *, now: float, by: str, note: str | None = None) -> Decision:
        return self.act("promote", now=now, by=by, note=note)

    def rollback(self, *, now: float, by: str, note: str | None = None) -> Decision:
        return self.act("rollback", now=now, by=by, note=note)

    def reset(self, *, now: float, by: str, note: str | None = None) -> Decision:
        return self.act("reset", now=now, by=by, note=note)

    # --- transitions ---------------------------------------------------------------

    def _transition(
        self,
        now: float,
        action: Action,
        by: str,
        status: Status,
        step: int,
        reasons: list[str],
        evidence: dict[str, Any],
    ) -> Decision:
        before = self.current_percent
        after = self._percent(status, step)
        if after != before or action == "reset":
            # New share, new evidence: the old window describes other traffic.
            self._epoch += 1
            self._looks = 0
            self._step_started_at = now
        self._status, self._step = status, step
        decision = Decision(action, now, by, status, step, after, before, tuple(reasons), evidence)
        self._record(decision)
        return decision

    def _record(self, decision: Decision) -> None:
        self._decisions.append(decision)
        del self._decisions[:-MAX_DECISIONS]
        self._last_evaluation = decision

    # --- persistence ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-safe data (the caller writes it to the state file)."""
        return {
            "schema": SCHEMA_VERSION,
            "candidate": self.spec.candidate.name,
            "status": self._status,
            "step": self._step,
            "percent": self.current_percent,
            "epoch": self._epoch,
            "looks": self._looks,
            "step_started_at": self._step_started_at,
            "decisions": [decision.to_dict() for decision in self._decisions],
            "last_evaluation": None
            if self._last_evaluation is None
            else self._last_evaluation.to_dict(),
        }

    @classmethod
    def from_dict(cls, spec: CanarySpec, data: dict[str, Any], *, now: float) -> Canary:
        """The canary saved in ``data``, under the current ``spec``.

        A different candidate than the one saved starts over at step 0 (its evidence
        belongs to another model), keeping the history and recording why. Raises
        ``ValueError`` for data this version cannot read; the caller decides whether to
        start fresh.
        """
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"canary state: schema {found!r} is not {SCHEMA_VERSION}, "
                "the one this version reads"
            )
        try:
            return cls._restore(spec, data, now)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"canary state is unreadable: {exc!r}") from None

    @classmethod
    def _restore(cls, spec: CanarySpec, data: dict[str, Any], now: float) -> Canary:
        canary = cls(spec, now=now)
        decisions = [Decision.from_dict(item) for item in data["decisions"]]
        canary._decisions = decisions[-MAX_DECISIONS:]
        saved = str(data["candidate"])
        if saved != spec.candidate.name:
            canary._epoch = int(data["epoch"]) + 1
            reason = f"candidate changed from {saved!r} to {spec.candidate.name!r}: starting over"
            previous = {key: data[key] for key in ("status", "step", "percent")}
            first, before = spec.steps[0], float(data["percent"])
            canary._record(
                Decision(
                    "reset",
                    now,
                    CONFIG,
                    "running",
                    0,
                    first,
                    before,
                    (reason,),
                    {"previous": previous},
                )
            )
            return canary
        canary._status = _member(data["status"], STATUSES, "status")
        # The steps may have been edited since: stay on a step that exists.
        canary._step = min(max(int(data["step"]), 0), len(spec.steps) - 1)
        canary._epoch = int(data["epoch"])
        canary._looks = int(data["looks"])
        canary._step_started_at = float(data["step_started_at"])
        if canary.current_percent != float(data["percent"]):
            # The share differs from the saved one: so does the evidence.
            canary._epoch, canary._looks = canary._epoch + 1, 0
        last = data.get("last_evaluation")
        canary._last_evaluation = None if last is None else Decision.from_dict(last)
        return canary
