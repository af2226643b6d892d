# Two commands on a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv from this project's own files first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test worker processes: most tests wait on gateway and simulator processes, so two workers on a
# 2-core machine roughly halve the suite's time. WORKERS=0 runs it in one process.
WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help demo test lint unit integration clean system

help:
	@echo "make demo   - run the simulator + gateway through an outage and recovery"
	@echo "make test   - lint (ruff, mypy) and run every test"
	@echo "make lint   - ruff and mypy only"
	@echo "make system - install the Debian packages the tests need (as root)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(PY) -m gateway demo

system:
	bash scripts/bootstrap-system.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests dashboards
	$(VENV)/bin/ruff format --check gateway tests dashboards
	$(VENV)/bin/mypy
	$(PY) dashboards/generate.py --check

test: system lint
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml
	bash scripts/ensure-postgres.sh
	$(VENV)/bin/pytest -n $(WORKERS) --cov --cov-report=term:skip-covered

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest tests/integration

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage data
