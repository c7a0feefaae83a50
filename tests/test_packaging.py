"""What pip installs: the distribution's name, every install line, the licence."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from shadowproxy import DISTRIBUTION

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TAKEN = {"shadowproxy": "a Shadowsocks proxy, 0.7.0 on PyPI"}
"""Names on the package index that belong to unrelated projects."""
INSTALL = re.compile(r"\bpip3? (?:install|wheel|download)\b([^#\n]*)")
NAMED = re.compile(r"(?<![\w./{-])(shadowproxy[\w.-]*)(?=\[|['\"\s]|$)")


def install_lines() -> list[tuple[str, str]]:
    """(file, command) for every pip command the project shows or runs."""
    files = [ROOT / "README.md", ROOT / "Dockerfile", ROOT / "Makefile", ROOT / ".ci" / "run"]
    for folder, pattern in (("docs", "*.md"), ("benchmarks", "*.md"), ("src", "*.py")):
        files += sorted((ROOT / folder).rglob(pattern))
    return [
        (str(path.relative_to(ROOT)), match.group(0))
        for path in files
        if path.is_file()
        for match in INSTALL.finditer(path.read_text())
    ]


def test_the_distribution_is_not_an_unrelated_project_on_the_index() -> None:
    name = PROJECT["project"]["name"]
    assert name not in TAKEN, f"{name!r} on the package index is {TAKEN[name]}"
    assert name == DISTRIBUTION
    assert PROJECT["project"]["scripts"] == {"shadowproxy": "shadowproxy.cli:main"}
    assert "shadowproxy" in importlib.metadata.packages_distributions()
    assert importlib.metadata.metadata(DISTRIBUTION)["Name"] == DISTRIBUTION


def test_every_install_line_names_the_distribution() -> None:
    lines = install_lines()
    wrong = [
        (where, line)
        for where, line in lines
        for name in NAMED.findall(line)
        if name != DISTRIBUTION
    ]
    assert not wrong, f"install lines naming another project: {wrong}"
    assert any(DISTRIBUTION in line for where, line in lines if where == "README.md")
    assert any(DISTRIBUTION in line for where, line in lines if where == "Dockerfile")


def test_extras_that_include_other_extras_name_the_distribution() -> None:
    own = [
        requirement
        for requirements in PROJECT["project"]["optional-dependencies"].values()
        for requirement in requirements
        if requirement.startswith("shadowproxy")
    ]
    assert own, "the demo and dev extras build on the report extra"
    assert all(re.match(rf"{re.escape(DISTRIBUTION)}\[", requirement) for requirement in own), own


def test_the_licence_is_apache_2_in_spdx_form_and_shipped() -> None:
    assert PROJECT["project"]["license"] == "Apache-2.0"
    assert PROJECT["project"]["license-files"] == ["LICENSE"]
    # The SPDX string form needs setuptools 77 or newer to build.
    (setuptools,) = [r for r in PROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.search(r">=\s*(\d+)", setuptools).group(1)) >= 77  # type: ignore[union-attr]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for section in ("TERMS AND CONDITIONS FOR USE", "9. Accepting Warranty", "END OF TERMS"):
        assert section in text
    assert importlib.metadata.metadata(DISTRIBUTION)["License-Expression"] == "Apache-2.0"
