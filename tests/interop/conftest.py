"""Every test of the tier carries the ``interop`` marker: ``pytest -m 'not interop'``
leaves the real third-party peers out of a quick local run."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.interop)
