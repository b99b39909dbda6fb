# OnePlatform developer and CI entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV := .venv
PY := $(VENV)/bin/python
CODE := src tests bench

.PHONY: setup run test lint format docs bench clean distclean

setup:
	scripts/setup.sh

run: setup
	$(VENV)/bin/onep up

lint: setup
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff check --fix $(CODE)
	$(VENV)/bin/ruff format $(CODE)

test: setup
	scripts/test-postgres.sh start
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	ONEP_TEST_DATABASE_URL="$$(scripts/test-postgres.sh url)" $(PY) -m pytest -q -ra -n 2 --durations=10 tests/unit
	ONEP_TEST_DATABASE_URL="$$(scripts/test-postgres.sh url)" $(PY) -m pytest -q -ra --durations=30 -n 2 --dist loadgroup tests/integration tests/e2e

# Reference pages generated from the code (a unit test fails when they are stale).
docs: setup
	$(PY) -m oneplatform.assembly > docs/states.md

# Every benchmark, in one run: cold creates on the three compute types and the bare-metal
# deploy by phase, warm claims on the three, backup and restore of a ~1 GB database from a
# container and a VM, then the scheduler's (about an hour here).
bench: setup
	$(PY) -m bench container db vm baremetal warm backup replication engines
	$(PY) -m bench scheduler

# Tool caches and the throwaway test database; keeps the (slow to build) image cache.
clean:
	-scripts/test-postgres.sh stop
	-rm -rf "$$(scripts/test-postgres.sh dir)"
	rm -rf .cache/pgtest .cache/pgtest-run .cache/pgtest-port .pytest_cache .mypy_cache .ruff_cache build dist
	find src tests bench -name __pycache__ -type d -prune -exec rm -rf {} +

# Everything set-up made: also the image cache and the virtualenv.
distclean: clean
	rm -rf .cache $(VENV)
