"""The ``promotion:`` block of a route: the criteria a candidate must meet to be promoted,
written down before the data are seen (pre-registered).

``shadowproxy report --config FILE`` reads each route's block; a route without one gets
the defaults below, which are also what the report uses without ``--config``::

    promotion:
      min_labels: 500
      accuracy: {non_inferiority_margin: 0.01}        # at most 1 point worse, one-sided 95%
      disagreement: {max_excess_over_baseline: 0.02}  # needs a baseline shadow
      latency_p99: {max_ratio: 1.2}
      error_rate: {max_increase: 0.005}

Without a baseline shadow the disagreement criterion is the absolute ``max`` (0.05). The
same objects state the limits a canary's guardrails use where the two overlap (error
rate, p99 latency ratio, disagreement): :func:`guardrail_limits`.

Like ``experiments.spec`` this module is imported by ``shadowproxy.config``: errors
become ``ConfigError(file, field, message)`` there, e.g.
``config/routes/churn.yaml: promotion.latency_p99.max_ratio: Input should be greater
than or equal to 1``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field

from shadowproxy.experiments.spec import GuardrailSpec
from shadowproxy.validation import FrozenModel

Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]

ALPHA = 0.05
"""Each criterion's one-sided level. PROMOTE needs every criterion to pass (an
intersection-union test: the chance of promoting a candidate that breaks one criterion
is at most ``ALPHA``); REJECT needs one criterion to fail after Holm's correction across
the criteria (the chance of rejecting a candidate that meets them all is at most
``ALPHA``)."""


class AccuracyCriterion(FrozenModel):
    non_inferiority_margin: Fraction = 0.01
    """How much worse than production the candidate may be: accuracy points as a
    fraction (0.01 = 1 point); for a regression route, a share of production's MAE."""


class DisagreementCriterion(FrozenModel):
    max_excess_over_baseline: Fraction = 0.02
    """With a baseline shadow: how much more often than the baseline the candidate may
    disagree with production."""
    max: Fraction = 0.05
    """Without a baseline shadow: the largest tolerated disagreement rate."""


class LatencyP99Criterion(FrozenModel):
    max_ratio: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 1.2
    """The largest tolerated ratio of the candidate's p99 latency to production's."""


class ErrorRateCriterion(FrozenModel):
    max_increase: Fraction = 0.005
    """The largest tolerated increase of the candidate's error rate over production's."""


class Promotion(FrozenModel):
    """A route's promotion criteria; every key is optional and defaults as documented."""

    min_labels: Annotated[int, Field(ge=0)] = 500
    """Below this many labelled requests the accuracy criterion stays open."""
    accuracy: AccuracyCriterion = AccuracyCriterion()
    """Candidate minus production accuracy on the labelled requests (MAE on a
    regression route), non-inferior within a margin."""
    disagreement: DisagreementCriterion = DisagreementCriterion()
    """The candidate's disagreement with production, over the baseline's when there is
    one."""
    latency_p99: LatencyP99Criterion = LatencyP99Criterion()
    """The candidate's p99 latency over production's."""
    error_rate: ErrorRateCriterion = ErrorRateCriterion()
    """The candidate's failures (error, timeout, 5xx) minus production's 5xx, per copy."""


DEFAULT = Promotion()


def for_canary(promotion: Promotion, guardrails: Iterable[GuardrailSpec]) -> Promotion:
    """A canary route's criteria: where a guardrail watches the same quantity (error-rate
    increase, p99 ratio, disagreement rate), its limit is the criterion's margin, so the
    report's decision and the live canary judge the candidate by the same numbers."""
    update: dict[str, FrozenModel] = {}
    for guardrail in guardrails:
        if guardrail.metric == "error_rate" and guardrail.max_increase is not None:
            update["error_rate"] = ErrorRateCriterion(max_increase=guardrail.max_increase)
        elif guardrail.metric == "p99_latency_ms" and guardrail.max_increase_ratio is not None:
            update["latency_p99"] = LatencyP99Criterion(max_ratio=guardrail.max_increase_ratio)
        elif guardrail.metric == "disagreement" and guardrail.max is not None:
            update["disagreement"] = promotion.disagreement.model_copy(
                update={"max": guardrail.max}
            )
    return promotion.model_copy(update=update)


def guardrail_limits(promotion: Promotion) -> dict[str, float]:
    """The limits a canary guardrail of each metric shares with the promotion criteria,
    keyed by the guardrail's metric name."""
    return {
        "error_rate": promotion.error_rate.max_increase,
        "p99_latency_ms": promotion.latency_p99.max_ratio,
        "disagreement": promotion.disagreement.max,
    }
