# `make demo`: install everything, start a single-machine cluster, apply examples/hello
# (`make demo EXAMPLE=webshop`: examples/webshop, haproxy in front of a web tier).
# `make test`: install everything, run linters and the whole test suite.
# Both are idempotent: installs happen once (stamp files), re-running is cheap.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := bubblewrap runc tini redis-server haproxy iproute2 procps util-linux curl python3 python3-venv
PYTEST_ARGS ?=
# Test files run on 4 workers (most e2e time is spent waiting on real processes, so 4
# beat 2 on this 2-core machine: 7 min instead of 14); a file stays on one worker, so a
# module-scoped cluster is shared as before. `make test PYTEST_WORKERS=0` runs serially.
PYTEST_WORKERS ?= 4
EXAMPLE ?= hello

.PHONY: deps demo test lint unit down clean

.stamp-apt: Makefile
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	  touch $@; \
	else \
	  echo "not root: skipping Debian packages ($(APT_PACKAGES)); tests that need them will say so"; \
	fi

.stamp-venv: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

deps: .stamp-apt .stamp-venv

demo: deps
	@bash scripts/demo.sh $(EXAMPLE)

down:
	@$(VENV)/bin/corral down --data-dir $${CORRAL_DEMO_DIR:-$$HOME/.local/share/corral-demo}

lint: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

# A private base temp dir per run: pytest's shared /tmp/pytest-of-USER is pruned by any
# other pytest session on the machine, which would pull the dirs from under our tests.
test: deps lint
	@base=$$(mktemp -d /tmp/corral-tests.XXXXXX); \
	$(VENV)/bin/pytest -ra -n $(PYTEST_WORKERS) --dist loadfile --basetemp=$$base $(PYTEST_ARGS); rc=$$?; rm -rf $$base; exit $$rc

unit: deps
	@base=$$(mktemp -d /tmp/corral-tests.XXXXXX); \
	$(VENV)/bin/pytest -ra -n $(PYTEST_WORKERS) --dist loadfile -m "not e2e" --basetemp=$$base $(PYTEST_ARGS); rc=$$?; \
	rm -rf $$base; exit $$rc

clean:
	rm -rf $(VENV) .stamp-apt .stamp-venv .pytest_cache .mypy_cache .ruff_cache
