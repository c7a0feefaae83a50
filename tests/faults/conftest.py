"""The fault matrix as a table at the end of the run: ``cases passed / cases``.

Each case is its own test, marked ``fault_matrix(side, case)``. A case passes only
when its test passed: a known failure (``xfail``) counts as not passed, because the
proxy does not yet do what the case asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class Row:
    side: str
    case: str
    result: str = "pass"


MATRIX = pytest.StashKey[dict[str, Row]]()
SIDES = ("production", "shadow", "client")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault_matrix(side, case): a row of the fault matrix (tests/faults)"
    )
    config.stash[MATRIX] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    marker = item.get_closest_marker("fault_matrix")
    if marker is None:
        return report
    side, case = marker.args
    row = item.config.stash[MATRIX].setdefault(item.nodeid, Row(side, case))
    if hasattr(report, "wasxfail"):
        row.result = "known failure"
    elif report.failed or (report.skipped and report.when != "teardown"):
        row.result = "FAIL" if report.failed else "skipped"
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = sorted(config.stash[MATRIX].values(), key=lambda row: SIDES.index(row.side))
    if not rows:
        return
    passed = sum(row.result == "pass" for row in rows)
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", f"fault matrix: {passed} cases passed / {len(rows)} cases")
    write("| fault on | case | result |")
    write("| --- | --- | --- |")
    for row in rows:
        write(f"| {row.side} | {row.case} | {row.result} |")
