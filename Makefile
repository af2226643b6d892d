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
.PHONY: help demo test lint unit integration clean system lock audit
# The dev install, every package pinned with its hashes (runtime and dev extras); `make lock`.
LOCK := requirements.lock
# The gateway's own dependencies only, pinned the same way: what the container image installs.
RUNTIME_LOCK := deploy/docker/requirements.lock

help:
	@echo "make demo   - run the simulator + gateway through an outage and recovery"
	@echo "make test   - lint (ruff, mypy) and run every test"
	@echo "make lint   - ruff and mypy only"
	@echo "make system - install the Debian packages the tests need (as root)"
	@echo "make lock   - regenerate $(LOCK) from pyproject.toml (UPGRADE=1: newest versions)"
	@echo "make audit  - check $(LOCK) for known vulnerabilities (pip-audit)"

# Every package comes from the lock, hash-checked (pip, setuptools and wheel too); the project
# itself is then installed without dependencies or build isolation, so nothing unhashed is fetched.
$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# Regenerate the lock after changing dependencies in pyproject.toml (commit both). Existing pins
# are kept where they still fit; UPGRADE=1 takes the newest versions allowed.
lock:
	@test -x $(VENV)/bin/pip-compile || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet --disable-pip-version-check 'pip-tools>=7.4,<8'; }
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --extra dev \
		--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		$(if $(UPGRADE),--upgrade) --output-file $(LOCK) pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet \
		--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		$(if $(UPGRADE),--upgrade) --output-file $(RUNTIME_LOCK) pyproject.toml

# Known vulnerabilities in any locked package fail the build, advisory named. Accepted ones are
# listed, with why and until when, in .pip-audit-ignore. When the vulnerability service answers
# for no package at all, it says so loudly and passes (STRICT_AUDIT=1: fails); SKIP_AUDIT=1
# skips the check, loudly (SECURITY.md, "Supply chain").
AUDIT_IGNORES := $(addprefix --ignore-vuln ,$(shell sed -e 's/\#.*//' .pip-audit-ignore))
audit: $(STAMP)
ifdef SKIP_AUDIT
	@echo "WARNING: SKIP_AUDIT is set: $(LOCK) was NOT checked for known vulnerabilities" >&2
else
	@bash scripts/audit.sh $(VENV) $(LOCK) $(AUDIT_IGNORES)
endif

demo: $(STAMP)
	$(PY) -m gateway demo

system:
	bash scripts/bootstrap-system.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests dashboards
	$(VENV)/bin/ruff format --check gateway tests dashboards
	$(VENV)/bin/mypy
	$(PY) dashboards/generate.py --check

test: system lint audit
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml
	promtool check config deploy/prometheus/prometheus.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	bash scripts/ensure-postgres.sh
	$(VENV)/bin/pytest -n $(WORKERS) --cov --cov-report=term:skip-covered

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest tests/integration

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage data
