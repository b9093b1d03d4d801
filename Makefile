# genpipe: the two commands of the README, plus helpers. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[cpu,test]"
	touch $@

## demo: set up, then run the VAE pipeline end to end in embedded mode on the offline digits data
demo: setup
	$(BIN)/genpipe run vae

## test: set up, then lint and run the whole test suite (starts its own SeaweedFS + MLflow)
test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider

## bench: run every benchmark one at a time (minutes; tables in bench/results/, see bench/README.md)
bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
