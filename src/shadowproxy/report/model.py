"""The report as plain data: what ``analysis`` computes and every renderer reads.

One :class:`PairReport` per (route, shadow). Rates are fractions (0.071, not 7.1);
``None`` means "no data for this", never zero. Renderers (HTML, table, summary.json)
format these values and compute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shadowproxy.stats import TestResult

OUTCOME_NAMES = ("ok", "error", "timeout", "dropped", "skipped")


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float


@dataclass(frozen=True)
class Percentiles:
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class TimePoint:
    start: datetime
    compared: int
    agreed: int
    rate: float
    ci: Interval


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    count: int


@dataclass(frozen=True)
class Confusion:
    classes: tuple[str, ...]
    """Row and column order: the most frequent classes, then ``(other)``."""
    cells: dict[tuple[str, str], int]
    """``(production class, shadow class) -> rows``."""


@dataclass(frozen=True)
class Example:
    request_id: str
    ts: datetime | None
    method: str | None
    path: str | None
    prod_prediction: str | None
    shadow_prediction: str | None
    diff_score: float | None
    detail: str | None
    request_body: str = ""
    prod_body: str = ""
    shadow_body: str = ""


@dataclass(frozen=True)
class Segment:
    path: str
    value: str
    rows: int
    compared: int
    agreed: int
    rate: float | None
    ci: Interval | None
    p_value: float | None
    """One-sided: is agreement in this segment lower than in the rest?"""
    p_adjusted: float | None
    """Holm-adjusted across the segments of the same pair and path."""
    worse: bool


@dataclass(frozen=True)
class Latency:
    production: Percentiles
    shadow: Percentiles
    pairs: int
    """Requests both sides answered (the percentiles are over these)."""
    sample: int
    """Pairs in the hash sample behind the p99 ratio's interval (all pairs when fewer)."""
    test: TestResult | None
    """Paired t test of the mean per-request difference, over every pair."""
    mean_diff: float | None
    """Mean over requests of (shadow - production) latency, ms."""
    mean_diff_ci: Interval | None
    """The t interval :attr:`test` inverts: it excludes 0 exactly when p < 0.05."""
    production_hist: tuple[Bin, ...] = ()
    shadow_hist: tuple[Bin, ...] = ()
    p99_log_se: float | None = None
    """Standard error of log(shadow p99 / production p99), from each side's
    order-statistic interval in the hash sample, scaled to all pairs."""


@dataclass(frozen=True)
class Criterion:
    """One promotion criterion, judged (see ``report.decision``)."""

    name: str
    """``accuracy`` (``mae`` on a regression route), ``disagreement``, ``latency_p99``
    or ``error_rate``."""
    estimate: float | None
    interval: Interval | None
    """The one-sided 95% bounds (together, the 90% two-sided interval)."""
    p_value: float | None
    """Non-inferiority: small when the worse-side bound is inside the margin."""
    p_fail: float | None
    """Inferiority beyond the margin, Holm-adjusted across the candidate's criteria."""
    margin: float
    result: str
    """``pass``, ``fail`` or ``open``."""
    test: str
    unit: str
    """What more of would settle an open criterion: ``labels`` or ``requests``."""
    needed: int | None
    """For an open criterion: about how many more ``unit`` would settle it."""
    higher_is_better: bool


@dataclass(frozen=True)
class Decision:
    status: str
    """``PROMOTE``, ``HOLD`` or ``REJECT``."""
    criteria: tuple[Criterion, ...]
    sentence: str


@dataclass(frozen=True)
class NoiseFloor:
    baselines: tuple[str, ...]
    compared: int
    disagreed: int
    rate: float
    ci: Interval
    test: TestResult | None
    """One-sided: does the candidate disagree more than the baseline(s)?"""
    mde: float | None
    """Smallest excess disagreement detectable at 80% power with these rows."""


@dataclass(frozen=True)
class Labels:
    task: str
    """``classification`` or ``regression``."""
    n: int
    production: dict[str, float | list[float] | None]
    shadow: dict[str, float | list[float] | None]
    test: TestResult
    difference: float
    """Shadow minus production: accuracy (higher is better) or MAE (lower is better)."""
    difference_ci: Interval | None
    mde: float | None
    """Smallest difference detectable at 80% power on ``n`` labels."""
    more_labels_needed: int | None
    """Extra labels to detect a difference of the observed size, when not significant."""
    duplicates: int = 0
    """Rows folded because their request was already counted (client retries keep the
    request id): each request counts once, with its first answered row."""
    discordant: tuple[int, int] | None = None
    """Classification: ``(b, c)``, requests only production got right and those only
    the shadow got right (McNemar's cells)."""
    error_sd: float | None = None
    """Regression: the standard deviation of the per-request error differences."""


@dataclass(frozen=True)
class ChaosCheck:
    """One fault injected by a chaos rule, and whether the monitoring noticed it.

    ``injected``, ``clean`` and ``expected`` are the same measure (``measure``) over
    the target's rows with this fault, over its rows without any fault, and what the
    fault should make of the latter: a median latency in ms plus the delay, a share of
    rows with the abort status (1.0), a disagreement rate (1.0).
    """

    route: str
    target: str
    """A shadow's name, or ``production``."""
    fault: str
    """``delay``, ``abort`` or ``corrupt``."""
    parameter: float | None
    """The delay in ms or the abort status; None for a corruption."""
    rows: int
    """Rows with this fault (for production: requests)."""
    measure: str
    measured: int
    """Injected rows the measure is over (corruption: the compared ones)."""
    injected: float | None
    clean: float | None
    clean_rows: int
    expected: float | None
    noticed: bool | None
    """The measure moved at least halfway from ``clean`` to ``expected``; None when
    there is nothing to tell it by (no rows to measure, or nothing to move)."""


@dataclass(frozen=True)
class ExperimentArm:
    """One arm of an experiment route; differences are this arm minus the control."""

    name: str
    exposed: int
    """Units it answered (``Experiment.unit``): users, or requests (exposures without
    injected faults)."""
    with_outcome: int
    """Those with a numeric outcome posted to ``/feedback``: the arm's sample size."""
    requests: int
    """The requests of those units (per request: ``exposed`` again)."""
    mean: float | None
    """The outcome's mean (for a binary outcome: the rate); per user, the mean of the
    users' means."""
    ci: Interval | None
    share: float | None
    """The configured share of the route's traffic (the newest recorded)."""
    difference: float | None = None
    difference_ci: Interval | None = None
    p_value: float | None = None
    """Against the control; Holm-adjusted when there are several treatment arms."""


@dataclass(frozen=True)
class SampleRatio:
    """The sample-ratio-mismatch check: exposures per arm against the configured split."""

    observed: dict[str, int]
    expected_shares: dict[str, float]
    """Normalised to sum to 1 over the compared arms."""
    test: TestResult | None
    mismatch: bool | None
    """p below ``experiments.SRM_ALPHA``; None when not tested."""
    note: str = ""


@dataclass(frozen=True)
class Power:
    mde_relative: float
    """The effect to plan for, relative to the control's mean (``--mde``)."""
    n_needed_per_arm: int | None
    """Outcomes per arm to detect it at alpha 0.05 (two-sided) with 80% power."""
    mde_at_current_n: float | None
    """The smallest relative effect the current arm sizes detect with 80% power."""


@dataclass(frozen=True)
class Experiment:
    route: str
    design: str
    """``ab`` (the arms other than production) or ``canary`` (candidate vs production)."""
    kind: str | None
    """``binary``, ``continuous`` or ``ordinal``; None when no outcome arrived."""
    control: str
    arms: tuple[ExperimentArm, ...]
    """The control first."""
    test: TestResult | None
    """Two arms: treatment against control; more: chi-square over all arms (binary)
    or None (see each arm's Holm-adjusted comparison)."""
    difference: float | None
    difference_ci: Interval | None
    srm: SampleRatio
    power: Power
    ignored: int
    """Feedback on these requests that is not a number or a boolean."""
    warnings: tuple[str, ...] = ()
    unit: str = "request"
    """What one observation is: ``user`` (the hashed assignment key, on routes with
    sticky assignment) or ``request`` (random assignment)."""
    units_in_several_arms: int = 0
    """Users seen in more than one arm: left out of every figure."""


@dataclass(frozen=True)
class GuardrailFigure:
    """One guardrail's figure at one canary decision, as the proxy recorded it."""

    metric: str
    verdict: str
    """``pass``, ``fail`` or ``undecided``."""
    value: float | None
    """The error-rate increase, the p99 ratio or the disagreement rate."""
    lower: float | None
    upper: float | None
    limit: float | None
    observations: str
    """What it was measured on, e.g. ``candidate 512 / production 4,877 requests``."""


@dataclass(frozen=True)
class CanaryStep:
    """One recorded canary decision and the evidence it was taken on."""

    at: datetime
    action: str
    by: str
    from_percent: float
    percent: float
    status: str
    reasons: tuple[str, ...]
    candidate_requests: int | None
    production_requests: int | None
    guardrails: tuple[GuardrailFigure, ...]


@dataclass(frozen=True)
class CanaryHistory:
    """A canary route's state file, read back: where it is and how it got there."""

    route: str
    candidate: str
    status: str
    percent: float
    steps: tuple[CanaryStep, ...]
    """The decisions that changed something, oldest first."""
    last_evaluation: CanaryStep | None
    source: str


@dataclass
class PairReport:
    route: str
    shadow: str
    role: str
    rows: int
    outcomes: dict[str, int]
    compared: int
    agreed: int
    agreement_rate: float | None
    agreement_ci: Interval | None
    comparator: str
    prod_5xx_rate: float | None
    shadow_5xx_rate: float | None
    status_mismatch: int
    latency: Latency
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    diff_range: tuple[float | None, float | None, float | None] = (None, None, None)
    """Smallest, 99th percentile and largest ``diff_score`` (for the histogram's bins)."""
    timeline: list[TimePoint] = field(default_factory=list)
    diff_histogram: list[Bin] = field(default_factory=list)
    confusion: Confusion | None = None
    noise_floor: NoiseFloor | None = None
    labels: Labels | None = None
    segments: list[Segment] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    verdict: str = ""
    chaos_excluded: int = 0
    """Rows with injected faults, left out of every figure above (see ``Report.chaos``)."""
    decision: Decision | None = None
    """Candidates only: PROMOTE, HOLD or REJECT on the route's promotion criteria."""
    nonfinite_latency: int = 0
    """Rows with a NaN or infinite latency: left out of the latency figures, warned about."""
    latency_diff: tuple[float, float] | None = None
    """Mean and sample variance of the per-request latency difference (shadow minus
    production, ms) over every pair; None below two pairs."""
    errors: tuple[int, int, int] = (0, 0, 0)
    """Copies sent, the shadow's failures among them (error, timeout, 5xx) and
    production's 5xx answers on the same requests: the error-rate criterion's counts."""


@dataclass
class Report:
    generated_at: datetime
    root: str
    filters: dict[str, object]
    pairs: list[PairReport]
    bucket_seconds: int
    segment_paths: tuple[str, ...] = ()
    labels_available: bool = False
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    chaos: list[ChaosCheck] = field(default_factory=list)
    experiments: list[Experiment] = field(default_factory=list)
    canaries: list[CanaryHistory] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Problems with the input that every reader must see (printed first, a banner in
    the HTML, ``warnings`` in summary.json)."""
