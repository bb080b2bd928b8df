# llama-recipe: two commands on a fresh machine — `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/llama-recipe

.PHONY: setup demo test test-fast bench ui clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(CLI) demo --out runs/demo

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

bench: setup
	$(PY) bench/run.py --out BENCHMARKS.md

ui: setup
	$(CLI) ui

clean:
	rm -rf runs .pytest_cache
