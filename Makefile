# Both entry points bootstrap .venv from the project's own files; nothing installed by hand is assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Everything ruff checks (folders that do not exist yet are skipped).
CODE := conftest.py imgframe tests benchmarks $(wildcard notebooks examples tools)

.PHONY: demo test test-real lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/imgframe demo

test: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy imgframe
	$(BIN)/pytest imgframe tests

# Real Keystone and Glance (pinned, from PyPI) in their own cached virtualenv: the first
# run builds it (~60-95 s), later runs reuse it. Not part of `make test` (-m 'not real').
# Its path is found before pytest starts and handed over: the suite's conftest.py points
# XDG_CACHE_HOME at a temporary folder, where the cache would be built again every run.
test-real: $(STAMP)
	services="$$($(BIN)/python tools/real_openstack.py)" && \
	IMGFRAME_REAL_VENV="$$services" $(BIN)/pytest tests/real -m real -p no:cacheprovider --timeout 900 --durations=8

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/mypy imgframe

format: $(STAMP)
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_parse.py
	$(BIN)/python benchmarks/bench_fetch.py
	$(BIN)/python benchmarks/bench_audit.py
	$(BIN)/python benchmarks/bench_million.py
	$(BIN)/python benchmarks/bench_unreachable.py
	$(BIN)/python benchmarks/bench_listing.py
	$(BIN)/python benchmarks/bench_servers.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
