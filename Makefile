# genpipe: the two commands of the README, plus helpers. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint layers bench bench-gpu clean toolchain

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[cpu,local,test]"
	touch $@

## demo: set up, then run the VAE pipeline end to end in embedded mode on the offline digits data
demo: setup
	$(BIN)/genpipe run vae

## test: set up, then lint and run the whole test suite (starts its own SeaweedFS + MLflow; builds
## the CPU image and runs a pipeline in containers, see tests/images/test_containers.py)
test: setup lint toolchain
	$(BIN)/pytest -q -p no:cacheprovider

## bench: run every benchmark one at a time (minutes; tables in bench/results/, see bench/README.md)
bench: setup
	$(BIN)/python bench/run_all.py

## bench-gpu: on an NVIDIA GPU machine, installs the gpu extra (own venv) and measures precision,
## steps per call, XLA and ours vs fit per model in <= 8 minutes (bench/gpu.sh; ARGS="--dry-run" on CPU)
bench-gpu:
	bash bench/gpu.sh $(ARGS)

## toolchain: the OCI tools the image tests use (podman, buildah, runc, debootstrap) and PostgreSQL,
## from Debian's packages when missing (as root); no Docker engine or Docker Hub needed
OCI_TOOLS := podman buildah runc debootstrap
toolchain:
	@missing=""; for t in $(OCI_TOOLS); do command -v $$t >/dev/null || PATH="$$PATH:/usr/sbin:/sbin" command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; \
	    apt-get install -y --no-install-recommends $(OCI_TOOLS) >/dev/null \
	      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends $(OCI_TOOLS) >/dev/null; }; \
	  else echo "missing:$$missing (Debian: sudo apt-get install --no-install-recommends $(OCI_TOOLS))"; exit 1; fi; \
	fi
	@# PostgreSQL's server programs: tests/k8s/test_mlflow_auth_live.py runs the in-cluster MLflow's
	@# exact configuration against a real PostgreSQL (Debian's package puts them outside PATH).
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing postgresql"; \
	    apt-get install -y --no-install-recommends postgresql >/dev/null \
	      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends postgresql >/dev/null; }; \
	  else echo "missing: PostgreSQL server (Debian: sudo apt-get install postgresql)"; exit 1; fi; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tests/layers.py

## layers: the import graph has no upward import and no cycle, no file is oversized unexplained
layers: setup
	$(BIN)/python tests/layers.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
