# make install: build/refresh .venv; make run: the DVC pipeline; make test: the test suite.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: install run test lint bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $(STAMP)

run: install
	dvc repro

# pytest exits 5 when it collects no test: not a failure of the suite
test: install
	pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

# throughput and overhead vs a plain PyTorch loop; writes benchmarks/latest.json
bench: install
	python benchmarks/bench.py

lint: install
	ruff check src flows tests benchmarks
	ruff format --check src flows tests benchmarks
