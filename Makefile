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
	@test -x .venv-bench/bin/python || (python3.11 -m venv .venv-bench && .venv-bench/bin/pip install -q \
		datatrove==0.10.1 warcio==1.8.1 faust-cchardet==3.2.0 python-magic==0.4.27 fasteners==0.20 orjson==3.13.0 tokenizers==0.23.3 fasttext-numpy2-wheel==0.9.2) \
		|| echo "datatrove venv not created: cc_bench.py reports the datatrove column as not run"
	$(PY) bench/cc_bench.py --out BENCHMARKS.md

ui: setup
	$(CLI) ui

clean:
	rm -rf runs .pytest_cache
