"""Power: sample sizes and minimum detectable effects for the report's tests, and the
tiny-arm warning."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from shadowproxy.stats.distributions import (
    norm_ppf,
)


def _z_alpha(alpha: float, two_sided: bool) -> float:
    return norm_ppf(1.0 - alpha / 2.0) if two_sided else norm_ppf(1.0 - alpha)


def n_two_proportions(
    p1: float, p2: float, *, alpha: float = 0.05, power: float = 0.8, two_sided: bool = False
) -> float:
    """Rows per group for a two-proportion z test to detect p1 vs p2 (equal groups)."""
    delta = abs(p1 - p2)
    if delta == 0.0:
        return math.inf
    za, zb = _z_alpha(alpha, two_sided), norm_ppf(power)
    pbar = (p1 + p2) / 2.0
    root = za * math.sqrt(2.0 * pbar * (1.0 - pbar)) + zb * math.sqrt(
        p1 * (1.0 - p1) + p2 * (1.0 - p2)
    )
    return root * root / (delta * delta)


def mde_two_proportions(
    p_base: float,
    n1: int,
    n2: int,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    two_sided: bool = False,
) -> float:
    """Smallest increase over ``p_base`` that n1 and n2 rows detect with ``power``."""
    if n1 <= 0 or n2 <= 0:
        return math.nan
    za, zb = _z_alpha(alpha, two_sided), norm_ppf(power)

    def detectable(delta: float) -> bool:
        p1 = min(1.0, p_base + delta)
        pooled = (n1 * p1 + n2 * p_base) / (n1 + n2)
        se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
        se1 = math.sqrt(p1 * (1.0 - p1) / n1 + p_base * (1.0 - p_base) / n2)
        return delta >= za * se0 + zb * se1

    return _bisect(detectable, 1.0 - p_base)


def n_paired_proportions(
    discordant: float, delta: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Labels for McNemar's test to detect an accuracy difference ``delta`` when a share
    ``discordant`` of requests has exactly one model right (Connor 1987)."""
    if delta == 0.0 or discordant <= 0.0 or delta * delta >= discordant:
        return math.inf
    za, zb = _z_alpha(alpha, True), norm_ppf(power)
    root = za * math.sqrt(discordant) + zb * math.sqrt(discordant - delta * delta)
    return root * root / (delta * delta)


def mde_paired_proportions(
    discordant: float, n: int, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest accuracy difference McNemar's test detects on ``n`` labels."""
    if n <= 0 or discordant <= 0.0:
        return math.nan
    return _bisect(
        lambda delta: n_paired_proportions(discordant, delta, alpha=alpha, power=power) <= n,
        math.sqrt(discordant) * (1.0 - 1e-12),
    )


def n_paired_means(sd: float, delta: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Pairs for a paired test of means to detect ``delta`` given the differences' sd."""
    if delta == 0.0:
        return math.inf
    root = (_z_alpha(alpha, True) + norm_ppf(power)) * sd
    return root * root / (delta * delta)


def mde_paired_means(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    if n <= 0:
        return math.nan
    return (_z_alpha(alpha, True) + norm_ppf(power)) * sd / math.sqrt(n)


def n_two_means(sd: float, delta: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Rows per arm for a two-sided test of means to detect ``delta`` between two equal
    arms whose outcome has standard deviation ``sd``. The normal approximation is used
    because the t version differs by about one row at the sizes experiments need."""
    if delta == 0.0:
        return math.inf
    root = (_z_alpha(alpha, True) + norm_ppf(power)) * sd
    return 2.0 * root * root / (delta * delta)


def mde_two_means(
    sd: float, n: int, n2: int | None = None, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest difference of means that arms of ``n`` and ``n2`` rows (default: equal
    arms) detect with ``power``; unequal arms because weights often are."""
    n2 = n if n2 is None else n2
    if n <= 0 or n2 <= 0:
        return math.nan
    return (_z_alpha(alpha, True) + norm_ppf(power)) * sd * math.sqrt(1.0 / n + 1.0 / n2)


def _bisect(detectable: Callable[[float], bool], upper: float) -> float:
    """The smallest delta in (0, upper] for which ``detectable`` holds, else NaN."""
    if upper <= 0.0 or not detectable(upper):
        return math.nan
    low, high = 0.0, upper
    for _ in range(60):
        middle = (low + high) / 2.0
        if detectable(middle):
            high = middle
        else:
            low = middle
    return high


def tiny_arm_warning(
    counts: Mapping[str, int], min_n: int = 100, max_ratio: float = 10.0, *, unit: str = "users"
) -> str | None:
    """A warning to print above an experiment's results when an arm is tiny or the arms
    are far apart in size, else None.

    An arm of 10 beside one of 2158 still yields means, rates and even small p-values,
    and they look as authoritative as any other; but a comparison is only as precise
    as its smallest arm, so the reader must be told before reading them.
    """
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"counts cannot be negative, got {dict(counts)}")
    sizes = sorted((n, arm) for arm, n in counts.items())
    problems = []
    tiny = [f"{arm!r} has {n} {unit}" for n, arm in sizes if n < min_n]
    if tiny:
        plural = "s" if len(tiny) > 1 else ""
        problems.append(f"Tiny arm{plural}: {', '.join(tiny)} (fewer than {min_n}).")
    if sizes and sizes[-1][0] > max_ratio * sizes[0][0]:
        (small_n, small), (large_n, large) = sizes[0], sizes[-1]
        relation = f", {large_n / small_n:.3g} times the {small_n} of" if small_n else " and"
        none = "" if small_n else " none"
        problems.append(
            f"Unbalanced arms: {large!r} has {large_n} {unit}{relation} {small!r}{none} "
            f"(more than {max_ratio:g} times)."
        )
    if not problems:
        return None
    advice = (
        "read these differences as noise." if tiny else "check that this split is the intended one."
    )
    return " ".join([*problems, f"A comparison is only as precise as its smallest arm: {advice}"])
