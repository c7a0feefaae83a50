"""The docs agree with the code: generated reference pages are current, every config key
is described, and every example config the docs include loads."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from shadowproxy.config import MainConfig, RouteConfig, load_config
from tests import docs_reference
from tests.docs_reference import COMMAND, PAGES, REFERENCE, walk

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_page_matches_the_code(name: str) -> None:
    page = REFERENCE / name
    assert page.exists(), f"docs/reference/{name} is missing: run `{COMMAND}`"
    assert page.read_text() == PAGES[name](), (
        f"docs/reference/{name} differs from the code it is generated from: run `{COMMAND}` "
        "and commit the result"
    )


@pytest.mark.parametrize("model", [MainConfig, RouteConfig])
def test_every_config_key_has_a_description(model: type) -> None:
    undescribed = [
        key.path
        for _, _, keys in walk(model, restart_only=())
        for key in keys
        if not key.description
    ]
    assert undescribed == [], f"give these fields a docstring: {undescribed}"


def test_every_metric_has_help_and_is_listed_once() -> None:
    rows = docs_reference.metric_rows()
    names = [row.name for row in rows]
    assert len(names) == len(set(names))
    assert all(row.help for row in rows)
    assert "shadowproxy_worker_restarts_total" in names  # the supervisor's own are included


def test_fault_matrix_lists_every_marked_case() -> None:
    cases = docs_reference.fault_cases()
    assert len(cases) == len({(case.side, case.name) for case in cases})
    sides = {case.side for case in cases}
    assert sides == {"production", "shadow", "client"}
    assert all(case.expected for case in cases), [c.name for c in cases if not c.expected]


def test_check_mode_names_a_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(docs_reference, "REFERENCE", tmp_path)
    assert docs_reference.main([]) == 0  # writes every page
    assert docs_reference.main(["--check"]) == 0
    (tmp_path / "metrics.md").write_text("stale\n")
    capsys.readouterr()
    assert docs_reference.main(["--check"]) == 1
    assert capsys.readouterr().out == "docs/reference/metrics.md: out of date\n"


@pytest.mark.parametrize("example", ["shadow", "canary", "ab", "chaos"])
def test_each_mode_has_an_example_config_that_loads(example: str) -> None:
    config = load_config(EXAMPLES / f"{example}.yaml", environ={})
    (route,) = config.routes
    assert route.mode == ("shadow" if example == "chaos" else example)
    assert bool(route.chaos) == (example == "chaos")


@pytest.mark.parametrize(
    ("example", "preset"),
    [("kserve", "kserve-v1"), ("triton", "open-inference"), ("vllm", "openai-chat")],
)
def test_serving_stack_examples_load(example: str, preset: str) -> None:
    config = load_config(EXAMPLES / f"{example}.yaml", environ={})
    (route,) = config.routes
    assert route.compare.prediction == preset


def test_every_example_file_is_tested() -> None:
    names = {path.stem for path in EXAMPLES.glob("*.yaml")}
    assert names == {"shadow", "canary", "ab", "chaos", "kserve", "triton", "vllm"}


def test_readme_stays_a_front_page() -> None:
    """The reference lives in docs/; the README is the pitch, the tour and the links."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines: move the detail into docs/"


def _resolves(dotted: str) -> bool:
    """``proxy.tee.Tee.start`` names a module of the package and attributes below it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module("shadowproxy." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_internals_names_only_code_that_exists() -> None:
    """internals.md walks the code module by module: a move or a rename must update it."""
    text = (ROOT / "docs" / "internals.md").read_text()
    # Config keys (``record.redact``) and file names are not code.
    keys = {key.path for model in (MainConfig, RouteConfig) for key in next(walk(model))[2]}
    named = {
        span
        for span in re.findall(r"`([a-z_][a-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`", text)
        if span.split(".")[0] not in keys and not span.endswith((".toml", ".yaml", ".md"))
    }
    assert len(named) > 40, sorted(named)  # the page does name the code
    missing = sorted(span for span in named if not _resolves(span))
    assert missing == [], f"docs/internals.md names code that does not exist: {missing}"


def test_modules_and_files_the_docs_name_exist() -> None:
    """A module path or repository file named in the README or the docs still exists."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    modules, files = set(), set()
    for page in pages:
        text = page.read_text()
        modules |= set(re.findall(r"`shadowproxy((?:\.[a-z_0-9]+)+)`", text))
        files |= set(re.findall(r"`((?:src|tests|config|benchmarks|docs)/[\w./-]+)`", text))
        files |= {f"src/{path}" for path in re.findall(r"`(shadowproxy/[\w/]+\.py)`", text)}
    missing = [f"shadowproxy{m}" for m in sorted(modules) if not _resolves(m.lstrip("."))]
    missing += [path for path in sorted(files) if not (ROOT / path).exists()]
    assert len(modules) + len(files) > 10
    assert missing == [], f"the docs name what does not exist: {missing}"
