# Two commands: `make demo` (set up, then run the main job end to end) and `make test`.
# Needs only Python 3.11+ and make: uv is installed into the project's own virtualenv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test dev browser clean-data

setup: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv sync --frozen --compile-bytecode --python $(BIN)/python
	touch $@

demo: setup
	$(BIN)/metering demo

test: setup browser
	$(BIN)/python -m pytest -n auto

# The finance report is checked in real headless Chromium (Debian's package). Installed when
# missing and we may (root, apt-get present); otherwise that one test says why it is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium; the report rendering test will be skipped"; \
	  else echo "note: chromium not installed; the report rendering test will be skipped"; fi; }

dev: setup
	$(BIN)/dagster dev

clean-data:
	rm -rf data/warehouse.duckdb* data/snapshot.duckdb data/dagster_home data/raw data/landing data/reports data/sandbox
