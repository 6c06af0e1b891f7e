# make install: build/refresh .venv; make run: the DVC pipeline; make test: the test suite.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: install browser postgres run test test-fast test-containers contracts lint bench gpu-inputs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $(STAMP)

run: install
	dvc repro

# headless Chromium (Debian's package) for tests/test_browser.py and PostgreSQL for tests/test_fleet.py (the
# tests start and stop their own cluster): installed where apt-get and root allow; elsewhere `make test` stops here
# and names the command, since those tests never skip
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "error: Chromium is not installed and could not be: run 'sudo apt-get install chromium'" >&2; exit 1; }

postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } || \
		{ echo "error: PostgreSQL is not installed and could not be: run 'sudo apt-get install postgresql'" >&2; exit 1; }

# the architecture's import contracts ([tool.importlinter] in pyproject.toml): a wrong arrow fails the build
contracts: install
	lint-imports

# every test runs: a skipped test fails the run (MOBITUNE_NO_SKIPS, tests/conftest.py; -rs lists why), and so
# does pytest's exit status 5, no test collected
test: install browser postgres contracts
	@MOBITUNE_NO_SKIPS=1 pytest -rs --durations=20 -m "not containers" $(PYTEST_ARGS); status=$$?; \
		[ $$status -ne 5 ] || echo "error: pytest collected no test ($(PYTEST_ARGS))" >&2; exit $$status

# the inner loop: unit tests only (no servers, no subprocess training), under a minute: one process per core
# (pytest-xdist), each with one torch thread, since their tensors are too small for threads to pay
test-fast: install contracts
	@OMP_NUM_THREADS=1 MOBITUNE_NO_SKIPS=1 pytest -rs -n auto --dist worksteal -m "not e2e and not containers" $(PYTEST_ARGS); status=$$?; \
		[ $$status -ne 5 ] || echo "error: pytest collected no test ($(PYTEST_ARGS))" >&2; exit $$status

# the worker image built and run in a Docker engine (installed and started if missing, stopped again after), from a
# local Debian base and an offline wheelhouse; every container and volume the tests made is removed, pass or fail
test-containers: install postgres
	@bash docker/test-containers.sh $(PYTEST_ARGS)

# throughput and overhead vs a plain PyTorch loop; writes benchmarks/latest.json
bench: install
	python benchmarks/bench.py

lint: install
	ruff check src flows tests benchmarks
	ruff format --check src flows tests benchmarks

# what benchmarks/gpu_check.sh needs on a GPU machine that cannot fetch anything: the data and stand-in
# weights of ../shared/data, and wheels for Python 3.12 of what its image lacks; carry benchmarks/out/gpu-inputs
gpu-inputs: install
	mkdir -p benchmarks/out/gpu-inputs/wheels
	cp ../shared/data/cifar10-jpeg.tar.gz ../shared/data/mobilenet_v2-imagenet-standin.pth benchmarks/out/gpu-inputs/
	python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d benchmarks/out/gpu-inputs/wheels \
		pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
		optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 sqlalchemy==2.1.9 mako==1.4.3
