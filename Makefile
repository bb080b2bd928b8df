# llama-recipe: two commands on a fresh machine — `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/llama-recipe

.PHONY: setup demo test test-fast bench ui postgres postgres-stop clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(CLI) demo --out runs/demo

test: setup
	$(PY) -m pytest -q --durations=15 tests

test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

bench: setup
	$(PY) bench/run.py --out BENCHMARKS.md
	@# datatrove and what its compared blocks need, pinned (xxhash 4 rejects the str its exact dedup
	@# hashes; spaCy is its English word tokenizer; kenlm-ex is the same `kenlm` module as ours).
	@test -f .venv-bench/.bench-deps-2 || (python3.11 -m venv .venv-bench && .venv-bench/bin/pip install -q \
		datatrove==0.10.1 warcio==1.8.1 faust-cchardet==3.2.0 python-magic==0.4.27 fasteners==0.20 orjson==3.13.0 \
		tokenizers==0.23.3 fasttext-numpy2-wheel==0.9.2 spacy==3.8.18 regex==2026.11.19 tldextract==5.4.0 \
		xxhash==3.8.2 kenlm-ex==0.2.1 sentencepiece==0.2.3 && touch .venv-bench/.bench-deps-2) \
		|| echo "datatrove venv not created: the benches report the datatrove column as not run"
	$(PY) bench/cc_bench.py --out BENCHMARKS.md
	$(PY) bench/tokens_bench.py --out BENCHMARKS.md
	$(PY) bench/sources_bench.py --out BENCHMARKS.md
	$(PY) bench/train_bench.py --out BENCHMARKS.md
	$(PY) bench/checkpoint_bench.py --out BENCHMARKS.md
	$(PY) bench/scaling_bench.py --out BENCHMARKS.md
	$(PY) bench/speedup_bench.py --out BENCHMARKS.md

ui: setup
	$(CLI) ui

# A local PostgreSQL for the Prefect server of large builds (prints the setting to export).
postgres:
	@bash scripts/postgres.sh

postgres-stop:
	@bash scripts/postgres.sh stop

clean:
	rm -rf runs .pytest_cache
