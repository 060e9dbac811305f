# The two set-up commands: `make demo` and `make test`. Everything is installed
# into .venv by this file; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit slow-sample bench bench-peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

## Run a real demo job end to end: generate clicks, window them, write Parquet.
demo: $(VENV)/.installed
	$(BIN)/sluice run examples/clicks.py

## Install test needs, lint, type-check, run the tests (and a bounded sample of slow ones).
test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest -q
	SLUICE_SLOW_SAMPLE=1 $(BIN)/pytest -q -m slow

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/window_throughput.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/log_append.py
	$(BIN)/python bench/log_latency.py
	$(BIN)/python bench/joins.py
	$(BIN)/python bench/nexmark_generate.py

## PyFlink for the Nexmark peer benchmark lives in its own venv (it pins an older
## pyarrow/numpy than Sluice uses).
FLINK_VENV := bench/.venv-flink
$(FLINK_VENV)/.installed: bench/nexmark_peers/requirements-flink.txt
	$(PYTHON) -m venv $(FLINK_VENV)
	$(FLINK_VENV)/bin/python -m pip install --quiet -r bench/nexmark_peers/requirements-flink.txt
	touch $@

## Nexmark side by side with PyFlink SQL and Bytewax (takes about half an hour).
bench-peers: $(VENV)/.installed-bench $(FLINK_VENV)/.installed
	$(BIN)/python bench/nexmark_peers.py

clean:
	rm -rf $(VENV) build *.egg-info
