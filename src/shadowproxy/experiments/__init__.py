"""Experiment modes of a route, as pure logic: ``canary`` and ``ab`` (no I/O, no clock).

How a request on an experiment route is decided and how a canary moves::

    request ──► assign: key (header value, or none: random) ─► blake2b point in [0, 1)
                  │  canary: point < percent ─► candidate answers, else production
                  │  ab:     point in the layer's share ─► arm by weight, else production
                  ▼
    answer ──► window.Window.record(side, error, latency)      (counts + log histogram)
               window.Window.record_comparisons(agreed, disagreed)  (sampled candidate
                                                  answers vs production, judged by the writer)
                  │
    every few seconds: canary.Canary.evaluate(now, window)
                  │  guardrails: pass | fail | undecided, each on one-sided bounds
                  ▼
               Decision(advance | complete | hold | rollback | pause, reasons, evidence)
               state (step, status, decisions) ─► to_dict ─► the caller's state file

Modules follow that path: ``spec`` (the ``canary:`` and ``ab:`` config blocks),
``assign`` (sticky hashing, layers), ``window`` (what a step observed), ``guardrails``
(the statistical tests) and ``canary`` (the state machine and operator actions).
"""

from shadowproxy.experiments.assign import assign_arm, bucket, choose_arm, in_canary
from shadowproxy.experiments.canary import (
    OPERATOR_ACTIONS,
    Canary,
    CanaryActionError,
    Decision,
)
from shadowproxy.experiments.spec import (
    ABSpec,
    ArmSpec,
    CanarySpec,
    CandidateSpec,
    GuardrailSpec,
    Mode,
    check_layers,
)
from shadowproxy.experiments.window import LatencyHistogram, Window

__all__ = [
    "OPERATOR_ACTIONS",
    "ABSpec",
    "ArmSpec",
    "Canary",
    "CanaryActionError",
    "CanarySpec",
    "CandidateSpec",
    "Decision",
    "GuardrailSpec",
    "LatencyHistogram",
    "Mode",
    "Window",
    "assign_arm",
    "bucket",
    "check_layers",
    "choose_arm",
    "in_canary",
]
