"""One line per shadow that states the evidence and claims nothing more.

Each clause quotes an estimate with its interval and the test behind it; a difference
whose test is not significant is called "not significant", and a sample too small to
test is called too small. Example::

    candidate-v2: disagrees on 7.1% [6.6, 7.7] (noise floor 0.4%, excess p<0.0001);
    accuracy +1.8 pts [0.9, 2.7], McNemar p=0.0003 on 12,400 labels;
    latency mean +3.1 ms [+2.8, +3.4], paired t p<0.0001 on 12,400 requests; p99 +14 ms
"""

from __future__ import annotations

from shadowproxy.report.model import Labels, Latency, NoiseFloor, PairReport

ALPHA = 0.05
MIN_LABELS = 30
MIN_LATENCY_PAIRS = 20
TEST_NAMES = {"McNemar exact": "McNemar", "paired t": "paired t"}
"""How a clause names its test."""
NOTABLE_SHARE = 0.01
"""Failed or unsent copies are mentioned from this share of rows on."""


def verdict(pair: PairReport) -> str:
    name = pair.shadow + (" (baseline)" if pair.role == "baseline" else "")
    clauses = [
        c
        for c in (
            _delivery(pair),
            _agreement(pair),
            _labels(pair.labels),
            _latency(pair.latency),
        )
        if c
    ]
    return f"{name}: " + "; ".join(clauses)


def p_text(p: float) -> str:
    """``p<0.0001``, else two significant digits (``p=0.0003``, ``p=0.041``)."""
    if p != p:  # NaN
        return "p=n/a"
    if p < 0.0001:
        return "p<0.0001"
    return f"p={p:.2g}" if p < 0.1 else f"p={p:.2f}"


def pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}%"


def _delivery(pair: PairReport) -> str:
    failed = pair.outcomes.get("error", 0) + pair.outcomes.get("timeout", 0)
    unsent = pair.outcomes.get("dropped", 0) + pair.outcomes.get("skipped", 0)
    parts = []
    if pair.rows and failed / pair.rows >= NOTABLE_SHARE:
        parts.append(f"{pct(failed / pair.rows)} of copies failed (error/timeout)")
    if pair.rows and unsent / pair.rows >= NOTABLE_SHARE:
        parts.append(f"{pct(unsent / pair.rows)} not sent (dropped/skipped)")
    return ", ".join(parts)


def _agreement(pair: PairReport) -> str:
    if pair.agreement_rate is None or pair.agreement_ci is None:
        return "no comparable answers"
    rate = 1.0 - pair.agreement_rate
    lo, hi = 1.0 - pair.agreement_ci.hi, 1.0 - pair.agreement_ci.lo
    text = f"disagrees on {pct(rate)} [{100 * lo:.1f}, {100 * hi:.1f}]"
    if pair.role == "baseline":
        return text + " (the route's noise floor)"
    if pair.noise_floor is not None:
        text += " " + _noise(pair.noise_floor)
    return text


def _noise(floor: NoiseFloor) -> str:
    base = f"noise floor {pct(floor.rate)}"
    if floor.test is None:
        return f"({base})"
    if floor.test.p_value < ALPHA:
        return f"({base}, excess {p_text(floor.test.p_value)})"
    return f"({base}, excess not significant, {p_text(floor.test.p_value)})"


def _labels(labels: Labels | None) -> str:
    if labels is None:
        return ""
    metric = "accuracy" if labels.task == "classification" else "MAE"
    if labels.n < MIN_LABELS:
        return f"too few labels ({labels.n:,}) to compare {metric}"
    estimate, size = (
        _accuracy_estimate(labels) if labels.task == "classification" else _mae_estimate(labels)
    )
    folded = f", {labels.duplicates:,} duplicate rows folded" if labels.duplicates else ""
    test = f"{TEST_NAMES.get(labels.test.name, labels.test.name)} {p_text(labels.test.p_value)}"
    test += f" on {labels.n:,} labels{folded}"
    if labels.test.p_value < ALPHA:
        return f"{estimate}, {test}"
    extra = ""
    if labels.more_labels_needed is not None and labels.difference:
        extra = f"; ~{labels.more_labels_needed:,} more labels to detect {size}"
    return f"{estimate}, not significant ({test}{extra})"


def _accuracy_estimate(labels: Labels) -> tuple[str, str]:
    """``accuracy +1.8 pts [0.9, 2.7]`` and the difference's size, ``1.8 pts``."""
    text = f"accuracy {100 * labels.difference:+.1f} pts"
    if labels.difference_ci is not None:
        text += f" [{100 * labels.difference_ci.lo:.1f}, {100 * labels.difference_ci.hi:.1f}]"
    return text, f"{100 * abs(labels.difference):.1f} pts"


def _mae_estimate(labels: Labels) -> tuple[str, str]:
    """``MAE -0.135 (-9.6%) [-0.15, -0.108]``: absolute and relative to production; the
    interval is the paired t interval of the mean error difference, which is the MAE
    difference, so it agrees with the paired t test quoted beside it."""
    text = f"MAE {labels.difference:+.3g}"
    prod_mae = labels.production.get("mae")
    if isinstance(prod_mae, float) and prod_mae > 0:
        text += f" ({labels.difference / prod_mae:+.1%})"
    if labels.difference_ci is not None:
        text += f" [{labels.difference_ci.lo:.3g}, {labels.difference_ci.hi:.3g}]"
    return text, f"{abs(labels.difference):.3g}"


def _signed(value: float, digits: int = 1) -> str:
    return f"{value:+.{digits}f}"


def _latency(latency: Latency) -> str:
    """The mean per-request difference with the t interval its paired t test inverts:
    the interval excludes 0 exactly when the test is significant, so the clause can
    never quote an estimate pointing one way and a test pointing the other."""
    if latency.test is None or latency.pairs < MIN_LATENCY_PAIRS or latency.mean_diff is None:
        return "latency: too few answered requests to compare"
    p99 = ""
    if latency.production.p99 is not None and latency.shadow.p99 is not None:
        p99 = f"; p99 {_signed(latency.shadow.p99 - latency.production.p99, 0)} ms"
    text = f"latency mean {_signed(latency.mean_diff)} ms"
    if latency.mean_diff_ci is not None:
        text += f" [{latency.mean_diff_ci.lo:+.1f}, {latency.mean_diff_ci.hi:+.1f}]"
    test = f"paired t {p_text(latency.test.p_value)} on {latency.pairs:,} requests"
    if latency.test.p_value < ALPHA:
        return f"{text}, {test}{p99}"
    return f"{text}, no significant difference ({test}){p99}"
