"""A fast version of ``benchmarks/aa_decision.py``: the decision's false-alarm rates on
simulated candidates with a known truth (the README quotes the 200-dataset figures)."""

from __future__ import annotations

import pytest

from shadowproxy.report import simulate


@pytest.mark.timeout(120)
def test_a_replica_of_production_is_rarely_rejected() -> None:
    outcome = simulate.run(simulate.Scenario(), 30, seed=11)
    # At most 5% false rejections: 30 datasets with 3 or more would be a 1-in-50 event.
    assert outcome.statuses["REJECT"] <= 2
    assert outcome.coverage("accuracy") >= 0.9


@pytest.mark.timeout(120)
def test_at_the_margins_neither_promoted_nor_rejected_beyond_alpha() -> None:
    outcome = simulate.run(simulate.at_the_margins(), 30, seed=12)
    assert outcome.statuses["REJECT"] <= 2
    assert outcome.statuses["PROMOTE"] <= 2


def test_the_simulation_can_tell_a_bad_candidate() -> None:
    bad = simulate.Scenario(accuracy_shift=-0.05, p99_ratio=1.5)
    outcome = simulate.run(bad, 8, seed=13)
    assert outcome.statuses["REJECT"] == 8
    good = simulate.Scenario(requests=8000, labels=6000, discordance=0.04)
    assert simulate.run(good, 4, seed=14).statuses["PROMOTE"] >= 3
