"""The command line explains itself: each command's help says what it does and shows
an example a reader can paste."""

from __future__ import annotations

import pytest

from shadowproxy.cli import main


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("serve", "exits 2"),
        ("validate", "Binds no port"),
    ],
)
def test_serve_and_validate_have_a_description_and_an_example(
    capsys: pytest.CaptureFixture[str], command: str, says: str
) -> None:
    text = help_text(capsys, command)
    assert says in text
    assert f"shadowproxy {command} --config config/shadowproxy.yaml" in text
    assert "examples:" in text


def test_log_level_says_what_each_level_shows(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_text(capsys).split())
    assert "--log-level {debug,info,warning}" in text
    assert "problems only" in text and "before the command" in text
