# tickcast: `make demo` and `make test` work from a fresh clone; each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo test lint typecheck unit bench deps venv model soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $(STAMP)

venv: $(STAMP)

# redis-server and mosquitto are Debian packages; the test fixtures start their own instances.
deps:
	@if ! command -v redis-server >/dev/null || ! { command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; }; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server mosquitto; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server mosquitto; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check streamer trainer tests bench
	$(VENV)/bin/ruff format --check streamer trainer tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) deps lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(VENV)/bin/tickcast-streamer demo $(ARGS)

bench: $(STAMP) deps
	@for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
