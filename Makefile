# Every target bootstraps its own virtual environment, so a fresh machine needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: test lint typecheck pytest docs docs-ref serve demo bench validate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: lint typecheck pytest docs

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard benchmarks/*.py)
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests $(wildcard benchmarks/*.py)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

# The docs site, offline; --strict (also set in mkdocs.yml) fails on a broken link or anchor.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Rewrite the generated pages in docs/reference/ from the code (tests/test_docs_reference.py
# fails while a committed page differs).
docs-ref: $(STAMP)
	$(BIN)/python -m tests.docs_reference

# The example config with two small example model servers on loopback.
serve: $(STAMP)
	$(BIN)/python -m shadowproxy.demo.examples --config config/shadowproxy.yaml

# The embedded default: two real models, shadowproxy in front, traffic, feedback, report.
demo: $(STAMP)
	$(BIN)/shadowproxy demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_proxy.py $(BENCH_ARGS)

validate: $(STAMP)
	$(BIN)/shadowproxy validate --config config/shadowproxy.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache shadow-logs site
