# The newcomer's contract: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The whole mesh on loopback (local mode) with a scripted tour of real traffic; exit 0 = every check passed.
demo: $(STAMP)
	$(VENV)/bin/lightmesh demo

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info

# Benchmarks: installs the native comparison points (nginx, haproxy, wrk, h2load) from Debian if missing.
BENCH_TOOLS := nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client
bench: $(STAMP)
	@missing=""; for t in $(BENCH_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; fi
	$(PY) bench/run.py $(BENCH)
