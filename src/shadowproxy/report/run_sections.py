"""The sections about the whole run: chaos checks, canary timelines and experiments
(the terminal table reuses their row builders)."""

from __future__ import annotations

from html import escape

from shadowproxy.report.formatting import html_table, interval, ms, pct
from shadowproxy.report.model import (
    CanaryStep,
    ChaosCheck,
    Experiment,
    ExperimentArm,
    GuardrailFigure,
    Report,
)
from shadowproxy.report.verdict import p_text


def chaos_section(report: Report) -> str:
    if not report.chaos:
        return ""
    rows = [
        (
            escape(check.route),
            escape(check.target),
            escape(fault_text(check)),
            f"{check.rows:,}",
            escape(check.measure),
            chaos_value(check, check.injected),
            chaos_value(check, check.clean),
            chaos_value(check, check.expected),
            {True: "yes", False: '<span class="bad">no</span>', None: "cannot tell"}[check.noticed],
        )
        for check in report.chaos
    ]
    head = (
        "route", "target", "fault", "injected rows", "measure", "injected",
        "without faults", "expected", "noticed",
    )  # fmt: skip
    return (
        '<section id="chaos"><h2>Chaos experiments</h2><p>Faults injected on purpose by the '
        "routes' <code>chaos</code> rules. Rows that carry one are left out of every other "
        "figure in this report. <i>Noticed</i>: the measure moved at least halfway from the "
        "rows without faults to the value the fault should produce.</p>"
        f"{html_table(head, rows)}</section>"
    )


def canaries_section(report: Report) -> str:
    """Each canary route: its step timeline, each decision with the evidence it was taken
    on, and the guardrail figures at each decision, as the proxy recorded them."""
    if not report.canaries:
        return ""
    parts = [
        (
            '<section id="canaries"><h2>Canary</h2><p>The decisions each canary route took, '
            "read from the state file the proxy keeps: when, who (<code>auto</code>: the "
            "guardrails; else the operator), the share of traffic before and after, why, and "
            "each guardrail's figure with its one-sided bounds against its limit.</p>"
        )
    ]
    for history in report.canaries:
        parts.append(
            f"<h3>{escape(history.route)}: candidate {escape(history.candidate)}, "
            f"{escape(history.status)} at {history.percent:g}%</h3>"
            f'<p class="note">From <code>{escape(history.source)}</code>.</p>'
        )
        steps = [*history.steps]
        if history.last_evaluation is not None:
            steps.append(history.last_evaluation)
        if not steps:
            parts.append("<p>No decisions recorded yet.</p>")
        parts.append(html_table(CANARY_HEAD, [canary_row(s) for s in steps]))
    parts.append("</section>")
    return "".join(parts)


CANARY_HEAD = ("time (UTC)", "action", "by", "share", "status", "requests", "guardrails", "why")


def canary_row(step: CanaryStep) -> list[str]:
    move = f"{step.from_percent:g}% &rarr; {step.percent:g}%"
    if step.from_percent == step.percent:
        move = f"{step.percent:g}%"
    requests = "not recorded"
    if step.candidate_requests is not None:
        requests = (
            f"candidate {step.candidate_requests:,} / production {step.production_requests or 0:,}"
        )
    figures = "<br>".join(escape(guardrail_text(g)) for g in step.guardrails) or "none evaluated"
    return [
        escape(step.at.strftime("%Y-%m-%d %H:%M:%S")),
        escape(step.action),
        escape(step.by),
        move,
        escape(step.status),
        requests,
        f'<span class="text">{figures}</span>',
        f'<span class="text">{escape("; ".join(step.reasons))}</span>',
    ]


def guardrail_text(g: GuardrailFigure) -> str:
    """``p99_latency_ms x1.031 [0.982, 1.094] vs limit 1.2: pass (candidate 512 / ...)``"""

    def value(v: float | None) -> str:
        if v is None:
            return "undefined"
        if g.metric == "p99_latency_ms":
            return f"x{v:.3f}"
        return f"{100 * v:.2f}%"

    bounds = f" [{value(g.lower)}, {value(g.upper)}]" if g.lower is not None else ""
    return (
        f"{g.metric} {value(g.value)}{bounds} vs limit {value(g.limit)}: {g.verdict} "
        f"({g.observations})"
    )


def fault_text(check: ChaosCheck) -> str:
    """``delay 500 ms``, ``abort 503``, ``corrupt``."""
    if check.parameter is None:
        return check.fault
    if check.fault == "delay":
        return f"delay {check.parameter:g} ms"
    return f"{check.fault} {check.parameter:g}"


def chaos_value(check: ChaosCheck, value: float | None) -> str:
    return ms(value) if check.fault == "delay" else pct(value)


def experiments_section(report: Report) -> str:
    if not report.experiments:
        return ""
    parts = [
        (
            '<section id="experiments"><h2>Experiments</h2><p>Per experiment route: each '
            "arm's requests (exposures without injected faults) and the outcomes posted to "
            "<code>/feedback</code> for them, compared with the control; per user when "
            "assignment is sticky by a key (a user's outcome is the mean over their "
            "requests), else per request; the split checked against the configured shares "
            "(sample ratio mismatch at p &lt; 0.001); the sample size that detects the "
            "planned effect at 80% power.</p>"
        )
    ]
    for trial in report.experiments:
        parts.append(f"<h3>{escape(experiment_title(trial))}</h3>")
        parts.extend(f'<div class="warn"><b>{escape(w)}</b></div>' for w in trial.warnings)
        rows = [[escape(cell) for cell in arm_row(trial, arm)] for arm in trial.arms]
        parts.append(html_table(arm_columns(trial), rows))
        parts.extend(f'<p class="note">{escape(line)}</p>' for line in experiment_lines(trial))
    parts.append("</section>")
    return "".join(parts)


UNIT_TEXT = {
    "user": "per user (hashed assignment key)",
    "request": "per request (random assignment)",
}


def experiment_title(trial: Experiment) -> str:
    """``rank (ab, binary, per user)``."""
    return f"{trial.route} ({trial.design}, {trial.kind or 'no outcomes'}, per {trial.unit})"


def arm_columns(trial: Experiment) -> tuple[str, ...]:
    counts = ("exposed",) if trial.unit == "request" else ("requests", "users")
    return ("arm", *counts, "with outcome", "mean [95% CI]", "vs control [95% CI]", "p")


def arm_row(trial: Experiment, arm: ExperimentArm) -> list[str]:
    scale, digits = (100.0, 2) if trial.kind == "binary" else (1.0, 3)
    mean = "no outcomes" if arm.mean is None else f"{arm.mean * scale:.{digits}f}"
    if arm.name == trial.control:
        versus = "control"
    elif arm.difference is None:
        versus = "not compared (no outcomes)"
    else:
        versus = (
            f"{arm.difference * scale:+.{digits}f} {interval(arm.difference_ci, scale, digits)}"
        )
    unit = "%" if trial.kind == "binary" and arm.mean is not None else ""
    requests = [] if trial.unit == "request" else [f"{arm.requests:,}"]
    return [
        arm.name,
        *requests,
        f"{arm.exposed:,}",
        f"{arm.with_outcome:,}",
        f"{mean}{unit} {interval(arm.ci, scale, digits)}".strip(),
        versus,
        "not tested" if arm.p_value is None else p_text(arm.p_value),
    ]


def experiment_lines(trial: Experiment) -> list[str]:
    """The unit, the test, the split check and the power figures, one sentence each."""
    lines = [unit_line(trial)]
    if trial.test is not None:
        extra = ""
        superiority = getattr(trial.test, "superiority", None)
        if superiority is not None:
            extra = f", P(treatment > control) = {superiority:.3f}"
        lines.append(
            f"test: {trial.test.name} statistic {trial.test.statistic:.3f}, "
            f"{p_text(trial.test.p_value)}{extra}"
        )
    srm = trial.srm
    observed = ", ".join(f"{arm} {n:,}" for arm, n in srm.observed.items())
    shares = ", ".join(f"{arm} {share:.1%}" for arm, share in srm.expected_shares.items())
    verdict = {True: "MISMATCH", False: "passes", None: "not tested"}[srm.mismatch]
    p = f", {p_text(srm.test.p_value)}" if srm.test is not None else ""
    note = f" ({srm.note})" if srm.note else ""
    lines.append(
        f"sample ratio ({trial.unit}s): {observed} vs configured {shares}{p}: {verdict}{note}"
    )
    power = trial.power
    needed = (
        "an undefined number of"
        if power.n_needed_per_arm is None
        else f"{power.n_needed_per_arm:,}"
    )
    per_arm = "outcomes" if trial.unit == "request" else "users with an outcome"
    lines.append(
        f"power: {needed} {per_arm} per arm detect a {power.mde_relative:.1%} relative effect "
        f"(alpha 0.05, 80% power); the current arms detect {pct(power.mde_at_current_n)}"
    )
    if trial.ignored:
        lines.append(f"{trial.ignored:,} feedback values were not numbers or booleans: ignored")
    return lines


def unit_line(trial: Experiment) -> str:
    """What one observation is, and the users left out for being in several arms."""
    text = f"unit of analysis: {UNIT_TEXT[trial.unit]}"
    if trial.unit == "request":
        return f"{text}: the exposures name no assignment key"
    text += ": each user counts once, with the mean of their requests' outcomes"
    several = trial.units_in_several_arms
    if several:
        text += f"; {several:,} user{'s' if several != 1 else ''} seen in several arms left out"
    return text
