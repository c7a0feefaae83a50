"""The command line as a newcomer meets it: a command whose extra is missing says what
to install, in one line, instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shadowproxy import DISTRIBUTION

WITHOUT = (
    "import sys; sys.modules.update(dict.fromkeys({hidden!r})); "
    "from shadowproxy.cli import main; sys.exit(main({argv!r}))"
)
"""The real CLI in a fresh interpreter where importing the hidden modules fails, as
where they were never installed."""


@pytest.mark.parametrize(
    ("argv", "hidden", "extra"),
    [
        (["report", "ROOT"], ("duckdb", "rich"), "report"),
        (["report", "ROOT"], ("duckdb",), "report"),
        (["report", "ROOT", "--out", "ROOT/report.html"], ("rich",), "report"),
        (["demo", "--out", "ROOT/demo"], ("sklearn",), "demo"),
    ],
    ids=["report-no-extra", "report-no-duckdb", "report-no-rich", "demo-no-extra"],
)
def test_a_command_without_its_extra_names_the_install_command(
    tmp_path: Path, argv: list[str], hidden: tuple[str, ...], extra: str
) -> None:
    argv = [arg.replace("ROOT", str(tmp_path)) for arg in argv]
    script = WITHOUT.format(hidden=hidden, argv=argv)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.endswith(f"pip install '{DISTRIBUTION}[{extra}]'"), line
    assert f"({hidden[0]} is not installed)" in line
