"""``docs/works-with.md`` names every test module of the tier, so a peer added without
a row in the table (or a row left after its test is gone) fails here."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
PAGE = HERE.parents[1] / "docs" / "works-with.md"


def test_the_page_and_the_tier_name_the_same_test_modules() -> None:
    named = set(re.findall(r"`(test_\w+\.py)`", PAGE.read_text()))
    modules = {p.name for p in HERE.glob("test_*.py")} - {Path(__file__).name}
    assert named == modules
