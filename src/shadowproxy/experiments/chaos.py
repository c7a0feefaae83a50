"""Chaos experiments: faults injected on purpose, to check that the monitoring notices.

A route's ``chaos:`` list holds rules such as::

    chaos:
      - {target: shadow:candidate-v2, fraction: 0.1, delay_ms: 500}
      - {target: shadow:candidate-v2, fraction: 0.05, abort_status: 503}
      - {target: shadow:candidate-v2, fraction: 0.05, corrupt_prediction: true}

Each rule names one fault. For every call to its target, every rule draws on its own
(``random() < fraction``), so several may fire on one call; they apply in a fixed
order: an abort replaces the call, else the delays (added up) come before it, and a
corruption is applied to the answer independently. What was applied travels with the
result as a marker (``delay_ms=500,corrupt_prediction``), recorded in the ``chaos``
and ``prod_chaos`` columns and counted in ``shadowproxy_chaos_injected_total``, so the
report can leave injected rows out of its figures and check they were noticed.

Faults on shadows cost nobody anything. Production's clients feel them, so a
production rule needs ``allow_production: true``, at most
``PRODUCTION_FRACTION_CAP`` of the requests, and no corruption (the client would get
the corrupted answer).

Pure: the config model and the draw, no I/O; the caller passes the random source in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PRODUCTION = "production"
SHADOW_PREFIX = "shadow:"
PRODUCTION_FRACTION_CAP = 0.05
"""The largest share of production requests a rule may hurt."""

Fault = Literal["delay", "abort", "corrupt"]
FAULTS: tuple[Fault, ...] = ("delay", "abort", "corrupt")

DELAY = "delay_ms"
ABORT = "abort_status"
CORRUPT = "corrupt_prediction"
"""Marker words: a marker is these, comma-separated (``delay_ms=500,corrupt_prediction``)."""

INJECTED_BODY = b'{"error": "injected by chaos"}'
"""What a shadow call aborted by chaos answers (production's abort answers a JSON error)."""


class FieldError(ValueError):
    """A validation error located below the value being validated: ``loc`` is appended
    to pydantic's location, so the message names e.g. ``chaos[1].target``."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class ChaosRule(BaseModel):
    """One fault on one target, for a share of its calls."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    target: str
    """``shadow:<name>`` (a shadow of this route) or ``production``."""
    fraction: Annotated[float, Field(gt=0, le=1)]
    """Share of the target's calls hit, 0 < fraction <= 1; every rule draws on its own for
    every call."""
    delay_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Wait this long before the call; the recorded latency includes it, and a shadow copy
    holds its ``max_in_flight`` slot meanwhile. A delay of at least a shadow's ``timeout_s``
    is a timeout, without a call."""
    abort_status: Annotated[int, Field(ge=100, le=599)] | None = None
    """No call: a shadow's result is this status with ``{"error": "injected by chaos"}``
    (outcome ``ok``, like a real error answer); on production the client gets this status
    (400..599) as a JSON error."""
    corrupt_prediction: bool = False
    """``true``: the call is made, then the writer changes the prediction the route's
    ``compare:`` reads before comparing it (every word of a string gets ``~chaos``, numbers
    move away from zero by at least their size, a score vector's top class moves to the
    next, booleans flip), so every comparator disagrees. Shadows only."""
    allow_production: bool = False
    """Required (``true``) for ``target: production``, whose ``fraction`` may be at most 0.05."""

    @model_validator(mode="after")
    def _check(self) -> ChaosRule:
        given = [
            name
            for name, value in ((DELAY, self.delay_ms), (ABORT, self.abort_status))
            if value is not None
        ] + ([CORRUPT] if self.corrupt_prediction else [])
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(
                f"give exactly one fault: delay_ms, abort_status or corrupt_prediction: true "
                f"(got {got})"
            )
        if self.target != PRODUCTION and not (
            self.target.startswith(SHADOW_PREFIX) and len(self.target) > len(SHADOW_PREFIX)
        ):
            raise FieldError(
                ("target",), f"must be 'shadow:<name>' or 'production', got {self.target!r}"
            )
        if self.target == PRODUCTION:
            self._check_production()
        return self

    def _check_production(self) -> None:
        if not self.allow_production:
            raise FieldError(
                ("allow_production",),
                "faults on production reach real users: set allow_production: true to mean it",
            )
        if self.fraction > PRODUCTION_FRACTION_CAP:
            raise FieldError(
                ("fraction",),
                f"must be at most {PRODUCTION_FRACTION_CAP:g} on production, got {self.fraction:g}",
            )
        if self.corrupt_prediction:
            raise FieldError(
                (CORRUPT,), "not allowed on production: the client would get the corrupted answer"
            )
        if self.abort_status is not None and self.abort_status < 400:
            raise FieldError(
                (ABORT,),
                f"must be 400..599 on production (the client gets an error answer), "
                f"got {self.abort_status}",
            )

    @property
    def shadow(self) -> str | None:
        """The shadow this rule targets; None for production."""
        return self.target[len(SHADOW_PREFIX) :] if self.target != PRODUCTION else None

    @property
    def fault(self) -> Fault:
        if self.abort_status is not None:
            return "abort"
        return "delay" if self.delay_ms is not None else "corrupt"


def unknown_target(rules: Sequence[ChaosRule], shadows: Sequence[str]) -> FieldError | None:
    """The first rule naming a shadow the route does not have, as a located error."""
    for index, rule in enumerate(rules):
        if rule.shadow is not None and rule.shadow not in shadows:
            known = ", ".join(shadows) or "none"
            return FieldError(
                (index, "target"),
                f"no shadow named {rule.shadow!r} in this route (shadows: {known})",
            )
    return None


def rules_for(rules: Sequence[ChaosRule], target: str) -> tuple[ChaosRule, ...]:
    """The rules of one target (``shadow:<name>`` or ``production``)."""
    return tuple(rule for rule in rules if rule.target == target)


@dataclass(frozen=True, slots=True)
class Injection:
    """The faults drawn for one call."""

    abort_status: int | None = None
    """Answer this status instead of calling (the delays and corruption then do not apply)."""
    delay_s: float = 0.0
    corrupt: bool = False

    @property
    def faults(self) -> tuple[Fault, ...]:
        if self.abort_status is not None:
            return ("abort",)
        return (*(("delay",) if self.delay_s else ()), *(("corrupt",) if self.corrupt else ()))

    @property
    def marker(self) -> str:
        """What the record says was injected, e.g. ``delay_ms=500,corrupt_prediction``."""
        if self.abort_status is not None:
            return f"{ABORT}={self.abort_status}"
        parts = [f"{DELAY}={self.delay_s * 1000:g}"] if self.delay_s else []
        return ",".join([*parts, *([CORRUPT] if self.corrupt else [])])


def draw(rules: Sequence[ChaosRule], random: Callable[[], float]) -> Injection | None:
    """The faults for one call: every rule draws once, in order; None when none fired."""
    abort: int | None = None
    delay_ms = 0.0
    corrupt = False
    for rule in rules:
        if random() >= rule.fraction:
            continue
        if rule.abort_status is not None:
            abort = rule.abort_status if abort is None else abort
        elif rule.delay_ms is not None:
            delay_ms += rule.delay_ms
        else:
            corrupt = True
    if abort is not None:
        return Injection(abort_status=abort)
    if not delay_ms and not corrupt:
        return None
    return Injection(delay_s=delay_ms / 1000.0, corrupt=corrupt)


def corrupts(marker: str | None) -> bool:
    """Does a recorded marker ask for the shadow's answer to be corrupted?"""
    return marker is not None and CORRUPT in marker.split(",")
