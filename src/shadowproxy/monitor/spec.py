"""The ``monitor:`` block of a route: what to watch and which rules must hold.

Parsed once at config load like the rest of the config: JSON paths are compiled here so
a malformed one is a config error naming ``monitor.<field>``, and every rule is checked
to make sense on its own (a ``sum`` rule with a ``path`` on a prediction, a ``length``
below 0 and an ``in`` list that is empty are refused, not ignored).
"""

from __future__ import annotations

import itertools
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from shadowproxy.compare import jsonpath
from shadowproxy.validation import NAME_PATTERN, FrozenModel, check_unique, is_header_name

DEFAULT_MAX_CATEGORIES = 20
DEFAULT_BUCKETS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 1000)
"""Histogram buckets of ``shadowproxy_prediction_value`` unless ``prediction.buckets`` says."""


def _check_path(value: str) -> str:
    jsonpath.parse(value)
    return value


def _check_buckets(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value or any(b <= a for a, b in itertools.pairwise(value)):
        raise ValueError(f"must be one or more strictly increasing numbers, got {list(value)}")
    return value


Path = Annotated[str, AfterValidator(_check_path)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Scalar = str | int | float | bool
Finite = Annotated[float, Field(allow_inf_nan=False)]
Buckets = Annotated[tuple[Finite, ...], AfterValidator(_check_buckets)]


class _Categories(FrozenModel):
    max_categories: Annotated[int, Field(ge=1, le=1000)] = DEFAULT_MAX_CATEGORIES
    """Distinct values kept as labels: the first N seen since start, or ``categories``."""
    categories: tuple[str, ...] | None = None
    """The values kept as labels, fixed; anything else counts as ``other``."""

    @model_validator(mode="after")
    def _fits(self) -> _Categories:
        if self.categories is not None:
            check_unique(self.categories, "category")
            if len(self.categories) > self.max_categories:
                raise ValueError(
                    f"categories lists {len(self.categories)} values, more than "
                    f"max_categories ({self.max_categories})"
                )
        return self


class FeatureSpec(_Categories):
    """One request field watched for drift, read with the compare extractor's paths."""

    name: Name
    """The feature's name in metrics (``feature`` label), rows and the report."""
    path: Path
    """Where the value is in the request body: a JSON path in the compare extractor's
    syntax (``$.instances[*][1]``); every value it matches counts."""
    kind: Literal["numeric", "categorical"]
    """``numeric``: a histogram and KS/PSI; ``categorical``: counts per category and
    chi-square/PSI."""
    buckets: Buckets = DEFAULT_BUCKETS
    """Numeric features: the buckets of ``shadowproxy_feature_value``."""

    @model_validator(mode="after")
    def _categories_only_when_categorical(self) -> FeatureSpec:
        if self.kind == "numeric" and self.categories is not None:
            raise ValueError("categories only apply to kind: categorical")
        return self


class PredictionSpec(_Categories):
    """How the prediction (the compare block's extraction) is watched."""

    kind: Literal["auto", "numeric", "label"] = "auto"
    """``auto``: numbers with a fraction are numeric, class ids, short strings and
    probability rows (their argmax) are labels."""
    buckets: Buckets = DEFAULT_BUCKETS
    """Numeric predictions: the buckets of ``shadowproxy_prediction_value``."""


class InvariantSpec(FrozenModel):
    """A typed rule that must hold without labels; a request breaking it counts once.

    ``min``/``max`` (may share a rule) bound every number matched; ``sum`` is checked
    per row (a row's numbers must sum to it within ``tolerance``); ``length`` is the
    length every match must have; ``in`` lists the values allowed.
    """

    model_config = FrozenModel.model_config | {"populate_by_name": True}

    name: Name
    """The rule's name in metrics (``invariant`` label), the violation columns and the
    report."""
    target: Literal["prediction", "request"]
    """``prediction``: each side's extracted prediction, row by row; ``request``: the
    request body at ``path``."""
    path: Path | None = None
    """``request`` only: the JSON path into the request body whose matches are checked."""
    min: Finite | None = None
    """Every matched number is at least this."""
    max: Finite | None = None
    """Every matched number is at most this (may share a rule with ``min``)."""
    sum: Finite | None = None
    """Each row's numbers add up to this, within ``tolerance``."""
    tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-6
    """How far from ``sum`` a row may be."""
    length: Annotated[int, Field(ge=0)] | None = None
    """Each match is a list of exactly this many items."""
    allowed: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    """``in:``: each matched value is one of these."""

    @model_validator(mode="after")
    def _one_rule(self) -> InvariantSpec:
        rules = [
            name
            for name, value in (
                ("min/max", self.min if self.min is not None else self.max),
                ("sum", self.sum),
                ("length", self.length),
                ("in", self.allowed),
            )
            if value is not None
        ]
        if len(rules) != 1:
            found = ", ".join(rules) or "none"
            raise ValueError(
                f"invariant {self.name!r} needs exactly one rule of min/max, sum, length "
                f"or in (min and max may share one), got {found}"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"invariant {self.name!r}: min {self.min} is above max {self.max}")
        if self.allowed is not None and not self.allowed:
            raise ValueError(f"invariant {self.name!r}: in lists no values")
        if self.target == "request" and self.path is None:
            raise ValueError(f"invariant {self.name!r}: target request needs a path")
        if self.target == "prediction" and self.path is not None:
            raise ValueError(
                f"invariant {self.name!r}: target prediction checks each row of the extracted "
                "prediction (compare.prediction); it takes no path"
            )
        return self


class ReferenceSpec(FrozenModel):
    """The rows the current window is compared with: one of ``{from, to}`` (``to``
    exclusive), ``{last_days: N}`` (the N days before the current window) or
    ``{root: URI}`` (another recording)."""

    model_config = FrozenModel.model_config | {"populate_by_name": True}

    since: date | datetime | None = Field(default=None, alias="from")
    """``from:``: the reference window's start (ISO date or timestamp)."""
    until: date | datetime | None = Field(default=None, alias="to")
    """``to:``: the reference window's end, exclusive."""
    last_days: Annotated[int, Field(ge=1, le=3660)] | None = None
    """The N days before the current window."""
    root: str | None = None
    """Another recording (a directory or ``s3://`` URI) as the reference."""

    @model_validator(mode="after")
    def _one_kind(self) -> ReferenceSpec:
        window = self.since is not None or self.until is not None
        kinds = [window, self.last_days is not None, self.root is not None]
        if sum(kinds) != 1:
            raise ValueError("needs exactly one of {from, to}, {last_days} or {root}")
        if window and (self.since is None or self.until is None):
            raise ValueError("from and to go together")
        if self.since and self.until and _as_datetime(self.since) >= _as_datetime(self.until):
            raise ValueError(f"from ({self.since}) must be before to ({self.until})")
        return self


def _as_datetime(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime(value.year, value.month, value.day)


class VersionSpec(FrozenModel):
    """Where production's model version is read, to find releases: a JSON ``path`` into
    its answer (Open Inference answers carry ``model_version``, the default) or a
    response ``header`` (then the path is not read)."""

    path: Path | None = "$.model_version"
    """Where production's answer names its model version (a JSON path)."""
    header: str | None = None
    """A response header naming the version, instead of ``path``."""

    @model_validator(mode="after")
    def _one(self) -> VersionSpec:
        if self.header is not None:
            if not is_header_name(self.header):
                raise ValueError(f"header: {self.header!r} is not a valid header name")
            if "path" in self.model_fields_set and self.path is not None:
                raise ValueError("give a path or a header, not both")
            return self.model_copy(update={"path": None})
        if self.path is None:
            raise ValueError("needs a path or a header")
        return self


class MonitorConfig(FrozenModel):
    """A route's ``monitor:`` block (README: Monitoring without labels)."""

    sample_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.1
    """Share of production answers watched, whether or not a shadow was sampled."""
    prediction: PredictionSpec = PredictionSpec()
    """How predictions are watched (their kind, buckets and categories)."""
    features: tuple[FeatureSpec, ...] = ()
    """Request fields watched, by JSON path."""
    invariants: tuple[InvariantSpec, ...] = ()
    """Typed rules that must hold without labels."""
    reference: ReferenceSpec | None = None
    """Without it, the report's reference is the first half of its window."""
    version: VersionSpec = VersionSpec()
    """Where production's model version is read, for release jumps."""
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.001
    """Holm-adjusted p-value below which a feature may be flagged."""
    psi_threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.2
    """PSI a flagged feature must also reach: at large n every shift is significant."""
    jump_window: Annotated[int, Field(ge=10, le=1_000_000)] = 500
    """Requests compared on each side of a model version change."""

    @model_validator(mode="after")
    def _unique(self) -> MonitorConfig:
        check_unique((f.name for f in self.features), "feature name", " in monitor.features")
        check_unique((i.name for i in self.invariants), "invariant name", " in monitor.invariants")
        return self
