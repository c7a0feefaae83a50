"""The ``canary:`` and ``ab:`` blocks of a route, parsed once at config load.

Like ``compare.spec``, this module is imported by ``shadowproxy.config`` and so cannot
import it back: the rules the two share (names, upstream URLs, header names) live in
``shadowproxy.validation``, so an error reads the same wherever it comes from. Errors
raised here become ``ConfigError(file, field, message)`` in the loader, e.g.::

    config/routes/price.yaml: canary.guardrails[1].max_increase_ratio: must be at least 1, got 0.9
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from shadowproxy.validation import (
    NAME_PATTERN,
    FrozenModel,
    check_choice,
    check_header_name,
    check_unique,
    check_url,
    is_header_name,
)

Mode = Literal["shadow", "canary", "ab"]
Metric = Literal["error_rate", "p99_latency_ms", "disagreement"]
METRICS: tuple[Metric, ...] = get_args(Metric)
OnFail = Literal["rollback", "pause"]

BOUND_KEYS: dict[Metric, str] = {
    "error_rate": "max_increase",
    "p99_latency_ms": "max_increase_ratio",
    "disagreement": "max",
}
"""The one bound each metric takes: a guardrail with another key is a config error."""

_BOUND_MEANING: dict[Metric, str] = {
    "error_rate": "the largest tolerated increase of the candidate's error rate over "
    "production's, 0..1",
    "p99_latency_ms": "the largest tolerated ratio of the candidate's p99 latency to "
    "production's, >= 1",
    "disagreement": "the largest tolerated share of candidate answers that disagree with "
    "production's, 0..1",
}

CHECK_SHADOW = "production"
"""The shadow name a canary route's disagreement check records under: a copy of a
candidate-served request sent to production. A route's own shadows cannot take it."""

RANDOM = "random"
HEADER_PREFIX = "header:"


def _absent_is_random(value: Any) -> Any:
    return RANDOM if value is None else value


def _check_assignment_key(value: str) -> str:
    text = value.strip()
    if text == RANDOM:
        return RANDOM
    if text.startswith(HEADER_PREFIX):
        name = text[len(HEADER_PREFIX) :].strip()
        if name and is_header_name(name):
            return HEADER_PREFIX + name
    raise ValueError(
        f"must be 'header:<Name>' (sticky: the same header value always gets the same "
        f"assignment, e.g. 'header:X-User-Id') or 'random' (per request), got {value!r}"
    )


def key_header(assignment_key: str) -> str | None:
    """The header whose value is the assignment key, or None for random assignment."""
    if assignment_key.startswith(HEADER_PREFIX):
        return assignment_key[len(HEADER_PREFIX) :]
    return None


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Url = Annotated[str, AfterValidator(check_url)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
AssignmentKey = Annotated[
    str, BeforeValidator(_absent_is_random), AfterValidator(_check_assignment_key)
]
HeaderName = Annotated[str, AfterValidator(check_header_name)]


class CandidateSpec(FrozenModel):
    """The upstream that answers the canary's slice of traffic for real."""

    name: Name
    """Names the candidate in ``X-Canary-Arm``, exposures and metrics."""
    url: Url
    """``scheme://host[:port]`` of the candidate."""
    timeout_s: Seconds = 10.0
    """Time to the candidate's response headers, then per read."""


class GuardrailSpec(FrozenModel):
    """One check of candidate against production over the same window.

    One model discriminated by ``metric`` (rather than a pydantic tagged union) so a
    mistake is reported at ``guardrails[i].<key>`` with the keys this metric takes,
    instead of under a synthetic ``guardrails[i].<metric>`` path.
    """

    metric: Metric
    """``error_rate``, ``p99_latency_ms`` or ``disagreement``; each takes its own bound key."""
    max_increase: Fraction | None = None
    """error_rate: fails when candidate rate - production rate exceeds this."""
    max_increase_ratio: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    """p99_latency_ms: fails when candidate p99 / production p99 exceeds this."""
    max: Fraction | None = None
    """disagreement: fails when the candidate's disagreement rate exceeds this."""
    sample_rate: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    """disagreement only: the share of candidate answers also sent to production (as a
    shadow call) to be compared."""

    @field_validator("metric", mode="before")
    @classmethod
    def _metric(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_choice(value, METRICS, "metric")
        return value

    @model_validator(mode="after")
    def _bound_fits_metric(self) -> GuardrailSpec:
        wanted = BOUND_KEYS[self.metric]
        given = [key for key in BOUND_KEYS.values() if getattr(self, key) is not None]
        for key in given:
            if key != wanted:
                raise ValueError(
                    f"{self.metric} takes {wanted} ({_BOUND_MEANING[self.metric]}), not {key}"
                )
        if not given:
            raise ValueError(f"{self.metric} needs {wanted}: {_BOUND_MEANING[self.metric]}")
        if self.metric != "disagreement" and "sample_rate" in self.model_fields_set:
            raise ValueError("sample_rate only applies to metric: disagreement")
        return self

    @property
    def limit(self) -> float:
        """The bound, whichever key carries it for this metric."""
        value = getattr(self, BOUND_KEYS[self.metric])
        assert isinstance(value, float)  # the validator made sure it is set
        return value


Percent = Annotated[float, Field(allow_inf_nan=False)]
DEFAULT_STEPS: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)


def _check_steps(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value:
        raise ValueError("must list at least one percentage, e.g. [1, 5, 25, 50, 100]")
    for index, step in enumerate(value):
        if not 0.0 < step <= 100.0:
            raise ValueError(f"every step must be in (0, 100], got {step:g} at [{index}]")
        if index and step <= value[index - 1]:
            raise ValueError(
                f"must be strictly increasing, got {step:g} after {value[index - 1]:g}"
            )
    return value


class CanarySpec(FrozenModel):
    """``mode: canary``: the candidate answers a growing share of traffic for real.

    The share follows ``steps``; a step advances when the candidate has served
    ``step_min_requests`` in at least ``step_min_duration_s`` and every guardrail passes
    at an advance look; a guardrail that fails at ``confidence`` triggers ``on_fail`` at
    once (see ``experiments.canary``).
    """

    candidate: CandidateSpec
    """The upstream that answers the canary's share for real."""
    assignment_key: AssignmentKey = RANDOM
    """``header:<Name>``: the header's value is hashed, so a user stays on one side and, as the
    share grows, only users are added (whoever had the candidate at 5% still has it at 25%).
    ``random``: decided per request."""
    steps: Annotated[tuple[Percent, ...], AfterValidator(_check_steps)] = DEFAULT_STEPS
    """Strictly increasing percentages in (0, 100] of traffic the candidate answers. Entering a
    100% step completes the canary; a last step below 100 completes once it passes."""
    step_min_requests: Annotated[int, Field(ge=1)] = 500
    """Candidate answers a step needs before it can advance."""
    step_min_duration_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 300.0
    """Time a step runs before it can advance."""
    guardrails: tuple[GuardrailSpec, ...] = ()
    """At most one per metric; with none, volume and time alone advance the canary."""
    on_fail: OnFail = "rollback"
    """When a guardrail fails: ``rollback`` (0% until an operator resets) or ``pause``."""
    confidence: Annotated[float, Field(gt=0.5, lt=1, allow_inf_nan=False)] = 0.95
    """Level of the one-sided bounds behind a failure. Advance looks use stricter levels
    whose errors add up to at most ``1 - confidence`` per step."""
    guardrail_min_samples: Annotated[int, Field(ge=1)] = 30
    """A guardrail decides nothing, pass or fail, on fewer candidate observations: below
    this a bound is too sensitive to a single error to act on."""

    @field_validator("guardrails")
    @classmethod
    def _one_guardrail_per_metric(
        cls, value: tuple[GuardrailSpec, ...]
    ) -> tuple[GuardrailSpec, ...]:
        seen: set[str] = set()
        for guardrail in value:
            if guardrail.metric in seen:
                raise ValueError(f"metric {guardrail.metric!r} has two guardrails; keep one")
            seen.add(guardrail.metric)
        return value

    @property
    def key_header(self) -> str | None:
        return key_header(self.assignment_key)

    @property
    def disagreement(self) -> GuardrailSpec | None:
        """The disagreement guardrail, if configured: its comparisons need production
        called on a sample of the candidate's answers."""
        return next((g for g in self.guardrails if g.metric == "disagreement"), None)


class ArmSpec(FrozenModel):
    """One arm of an A/B experiment: an upstream and its relative share of traffic."""

    name: Name
    """Names the arm in the arm header, exposures and metrics."""
    url: Url
    """``scheme://host[:port]`` of the arm's upstream."""
    weight: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    """Relative share of the experiment's traffic (50/50, 1/1/2), > 0."""
    timeout_s: Seconds = 10.0
    """Time to the arm's response headers, then per read."""


def _check_share(value: tuple[float, float]) -> tuple[float, float]:
    start, end = value
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(
            f"must be [start, end) with 0 <= start < end <= 1, got [{start:g}, {end:g}]"
        )
    return value


class ABSpec(FrozenModel):
    """``mode: ab``: sticky, weighted split of traffic between named arms.

    Weights are relative (50/50, 1/1/2). Experiments naming the same ``layer`` share one
    assignment of users to points in [0, 1) and each owns its ``layer_share`` of it, so
    two experiments in one layer never see the same user; experiments in different
    layers (or without one) assign independently (see ``experiments.assign``).
    """

    arms: Annotated[tuple[ArmSpec, ...], Field(min_length=2)]
    """At least two, with unique names."""
    assignment_key: AssignmentKey = RANDOM
    """As for a canary: ``header:<Name>`` is sticky per hashed header value, ``random`` decides
    per request."""
    layer: Name | None = None
    """Experiments in one layer share a single hash of the user and must not overlap; in
    different layers (or with none) assignments are independent."""
    layer_share: Annotated[tuple[Fraction, Fraction], AfterValidator(_check_share)] = (0.0, 1.0)
    """The slice ``[start, end)`` of the layer this experiment owns (needs ``layer``); users
    outside it are answered by production (arm ``production``). Overlapping shares in one
    layer are a config error naming both routes."""
    arm_header: HeaderName = "X-Experiment-Arm"
    """Response header naming the arm that answered."""

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, value: tuple[ArmSpec, ...]) -> tuple[ArmSpec, ...]:
        check_unique((arm.name for arm in value), "arm name")
        return value

    @model_validator(mode="after")
    def _share_needs_layer(self) -> ABSpec:
        if self.layer is None and "layer_share" in self.model_fields_set:
            raise ValueError("layer_share needs a layer: name the layer it is a share of")
        return self

    @property
    def key_header(self) -> str | None:
        return key_header(self.assignment_key)

    @property
    def weights(self) -> tuple[tuple[str, float], ...]:
        return tuple((arm.name, arm.weight) for arm in self.arms)

    def layer_of(self, experiment: str) -> str:
        """The layer this experiment assigns in: its own, private one when none is named
        (the ':' cannot occur in a name, so it never collides with a named layer)."""
        return self.layer if self.layer is not None else f"experiment:{experiment}"


def check_layers(experiments: Iterable[tuple[str, ABSpec]]) -> None:
    """Refuse two experiments whose shares of one layer overlap (they would see the same
    users). ``experiments`` are (route name, spec); called over the whole route set."""
    claims: dict[str, list[tuple[str, tuple[float, float]]]] = {}
    for name, spec in experiments:
        if spec.layer is None:
            continue
        start, end = spec.layer_share
        for other, (other_start, other_end) in claims.get(spec.layer, []):
            if start < other_end and other_start < end:
                raise ValueError(
                    f"layer {spec.layer!r}: {name!r} has layer_share [{start:g}, {end:g}), "
                    f"which overlaps {other!r} at [{other_start:g}, {other_end:g})"
                )
        claims.setdefault(spec.layer, []).append((name, spec.layer_share))
