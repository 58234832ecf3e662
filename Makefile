# Each target does its own set-up on a fresh machine (only Python 3.11+, pip and git needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup lint test run bench campaign docs serve-docs clean

# PyTorch's CPU build first where pip's find-links hold it (CI's do): '.[dev]' needs torch, and a torch taken from
# the index is the CUDA build (several GB, minutes to install). Elsewhere '.[dev]' takes torch from the index.
TORCH_CPU := torch==2.13.0

$(BIN)/build-aug: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-index --no-deps '$(TORCH_CPU)' 2>/dev/null \
		|| echo "no local build of $(TORCH_CPU) in pip's find-links: '.[dev]' takes torch from the index"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/build-aug

# what CI runs before the tests, each configured in pyproject.toml: style and lint (ruff; `ruff format .` fixes the
# layout), the import contracts (import-linter) and the types (mypy)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# four test processes on two cores: most tests wait on a command they started (TensorFlow's import, a server);
# each takes whole files, the longest first (tests/conftest.py LONGEST_FILES), not xdist's own order by test count
test: setup
	$(BIN)/python -m pytest -q -n 4 --dist loadfile --no-loadscope-reorder

run: setup
	$(BIN)/build-aug --copies 5
	$(BIN)/train --store data/aug.zarr

campaign: setup
	$(BIN)/python tests/campaign.py --json campaign.json

bench: setup
	$(BIN)/python bench/bench_codecs.py --store data/aug.zarr

# the documentation site (mkdocs.yml): built into site/, or served at http://127.0.0.1:8000 while you edit
$(VENV)/.docs-installed: $(BIN)/build-aug pyproject.toml
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

serve-docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) preview site
