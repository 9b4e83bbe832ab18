# Developer and CI entry points. Everything runs from the repo's own .venv so a fresh machine
# needs only a Python >= 3.11 and make: `make test` installs what it needs first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test run bench bench-report par clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes, so repeated `make test` runs start at once.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

# Extras installed on demand, each with its own stamp: `make par` needs PyInstaller,
# `make bench-report` matplotlib (which the test extra also has, for its tests).
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[$*]'
	touch $@

# Lint, format and types: mypy checks contract/, provider/ and wasmbus_testkit/ as configured
# in pyproject.toml ([tool.mypy]: strict on contract/ and provider/store/).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/mypy

# The par extra too: tests/integration/test_par.py builds and runs a real provider archive.
test: install $(VENV)/.installed-par lint
	$(BIN)/python -m pytest -q

run: install
	$(BIN)/nats-kvcache dev

bench: install
	$(BIN)/python bench/run_all.py

bench-report: $(VENV)/.installed-report
	$(BIN)/nats-kvcache bench-report --results bench/results --out docs/bench

# The wasmCloud provider archive dist/nats-kvcache.par.gz: claims.jwt + a PyInstaller one-file
# provider executable. Keys: `make par ISSUER_SEED=SA... [SUBJECT_SEED=SV...]`, else generated
# once into keys/ (git-ignored, mode 0600) and reused. The recipe is not echoed: it may hold a
# seed, and the seeds go to the CLI through its environment, not its command line.
par: $(VENV)/.installed-par
	@echo "nats-kvcache par --output dist/nats-kvcache.par.gz --build-dir build/par"
	@$(if $(ISSUER_SEED),NATS_KVCACHE_ISSUER_SEED='$(ISSUER_SEED)') \
	$(if $(SUBJECT_SEED),NATS_KVCACHE_SUBJECT_SEED='$(SUBJECT_SEED)') \
	$(BIN)/nats-kvcache par --output dist/nats-kvcache.par.gz --build-dir build/par

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis .dev-lattice
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
