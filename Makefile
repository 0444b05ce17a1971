# Two commands: `make demo` (set up, then run the main job end to end) and `make test`.
# Needs only Python 3.11+ and make: uv is installed into the project's own virtualenv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test dev clean-data

setup: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv sync --frozen --python $(BIN)/python
	touch $@

demo: setup
	$(BIN)/metering demo

test: setup
	$(BIN)/python -m pytest

dev: setup
	$(BIN)/dagster dev

clean-data:
	rm -rf data/warehouse.duckdb* data/analytics.duckdb data/dagster_home data/raw data/landing data/reports data/sandbox
