# The two commands a newcomer needs: `make up` (the whole stack) and `make test` (the suite).
# Both create the virtualenv and install everything they need on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: up test lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/wallet up

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy foundation schemas ledger storage messaging processor projections commands wallet
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -m "not tansu_only"
	WALLET_EMBEDDED_BROKER=tansu $(VENV)/bin/pytest -m "tansu_only or also_tansu"

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
