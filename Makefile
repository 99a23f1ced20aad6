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

# Benchmarks: installs the native comparison points (nginx, haproxy, wrk) from Debian if missing.
BENCH_PKGS := nginx haproxy wrk
bench: $(STAMP)
	@missing=""; for p in $(BENCH_PKGS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; fi
	$(PY) bench/run.py $(BENCH)
