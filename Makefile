# Entry points. `make test` and `make demo` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-fast lint demo install clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Two pytest-xdist workers (TEST_WORKERS=0: one process): most tests wait on real processes and
# services (Ray, MLflow, Slurm, Chromium), so two share the 2 CPU cores of CI well. Slurm tests
# run in one worker, in order (tests/conftest.py).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The edit-test loop: no Slurm dev cluster, no headless browser, no test marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not slurm and not browser" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check $(RUFF_ARGS)

demo: $(STAMP)
	$(PY) -m jobs.demo

clean-runs:
	rm -rf runs mlflow.db mlartifacts reports
