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
# promtool (package prometheus; its service is not started) checks the alert rules and
# systemd-analyze (package systemd) verifies the units; tests/deploy skip loudly without them.
REQUIRED_TOOLS := redis-server:redis-server mosquitto:mosquitto
OPTIONAL_TOOLS := promtool:prometheus systemd-analyze:systemd mosquitto_sub:mosquitto-clients
missing_packages = $$(for tool in $(1); do command -v $${tool%%:*} >/dev/null || test -x /usr/sbin/$${tool%%:*} || echo $${tool\#\#*:}; done)
APT := $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get
deps:
	@required="$(call missing_packages,$(REQUIRED_TOOLS))"; optional="$(call missing_packages,$(OPTIONAL_TOOLS))"; \
	if [ -n "$$required$$optional" ]; then $(APT) update -qq; fi; \
	if [ -n "$$required" ]; then $(APT) install -y -qq $$required || exit 1; fi; \
	if [ -n "$$optional" ]; then $(APT) install -y -qq --no-install-recommends $$optional \
		|| echo "WARNING: could not install $$optional: tests/deploy skip those checks loudly"; fi

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
	@for b in bench/bench_*.py; do echo "# $$b" >&2; $(PY) $$b || exit 1; done

# soak: a week of real data, 50 symbols over Binance, Coinbase and Kraken (one replay each),
# rotations, serverShutdown, drops, a 418 ban, Coinbase quiet stretches (~17 min); not part of
# make test. ARGS="--venues binance" runs one venue
soak: $(STAMP) deps
	$(PY) bench/soak.py $(ARGS)

# the shipped default model, reproduced bit for bit from the bundled real data (3-5 min on 2 cores)
model: $(STAMP)
	$(PY) -m trainer train --config models/default/train.toml --out models/default

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
