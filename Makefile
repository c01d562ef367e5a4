# fflab: the public face is `make run`, `make test`, `make serve`, `make bench`.
# Each target sets up what is missing (virtual environment, packages, data) by itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export FFLAB_DATA_ROOT ?= $(CURDIR)/data
N ?= 60000
LOAD ?= embedded
BUDGET ?= 600

.PHONY: lint typecheck run test serve bench gpu-check load-bench reproduce screenshots data setup clean help

help:
	@echo "make run    - run the quick preset (FF, BP/FF, BP on MNIST) and print where the results are"
	@echo "make test   - run the test suite"
	@echo "make lint   - ruff (lint, import order), as CI runs it before the tests"
	@echo "make typecheck - mypy --strict on the library, the API and the worker, as CI runs it after make lint"
	@echo "make serve  - start the embedded service (API + worker, no servers needed)"
	@echo "make bench  - benchmark FF training (N=$(N) images; make bench N=20000 for a quick one)"
	@echo "make gpu-check - prove the GPU path: cuda tests, bench, TF32 vs FP32, the paper sweep (BUDGET=$(BUDGET) s; skips without CUDA)"
	@echo "make load-bench - 50 clients polling fflab serve while it trains (LOAD=stack: 200 on PostgreSQL + Redis)"
	@echo "make screenshots - the web UI's pages at laptop and phone widths, into docs/img/ui-*.png (a browser test)"
	@echo "make reproduce - the paper preset at this machine's scale, then fflab compare (hours; docs/reproduction.md)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

data: $(FFLAB_DATA_ROOT)/.fetched

$(FFLAB_DATA_ROOT)/.fetched: $(VENV)/.installed
	$(BIN)/fflab fetch-data
	touch $@

run: setup data
	$(BIN)/fflab quickstart --preset quick

test: setup data
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check shared api worker tests benchmarks migrations

typecheck: setup
	$(BIN)/mypy

serve: setup data
	$(BIN)/fflab serve

bench: setup data
	$(BIN)/python -m benchmarks.ff_bench --n $(N)

gpu-check: setup data
	$(BIN)/python -m benchmarks.gpu_check --budget $(BUDGET)

load-bench: setup data
	$(BIN)/python -m benchmarks.load_bench --mode $(LOAD) --seconds 20

screenshots: setup data
	FFLAB_UI_SCREENSHOTS=$(CURDIR)/docs/img $(BIN)/python -m pytest tests/test_ui_browser.py tests/test_ui_compare_browser.py -k embedded_default -q

reproduce: setup data
	benchmarks/reproduce_paper.sh results/reproduction

clean:
	rm -rf results var .pytest_cache
