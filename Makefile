# imagine-pipeline: every target is one line that calls the real command.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup check-config run demo test test-fast lint bench chaos flower clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q -c constraints.txt -e '.[local,dev]' && touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the project with its local and dev extras

check-config: $(STAMP) ## Print what make run would use, each setting it ignores, or the one it refuses
	$(BIN)/imagine stack --check

run: $(STAMP) ## Start the whole local stack, run the example jobs, stay up until Ctrl-C
	$(BIN)/imagine stack

demo: $(STAMP) ## Start the stack, run the example jobs, save images under ./out/, exit
	$(BIN)/imagine stack --demo

test: $(STAMP) ## Run every test suite (unit, integration, e2e, reduced chaos)
	$(BIN)/pytest

test-fast: $(STAMP) ## Run the unit tests only
	$(BIN)/pytest -m unit

lint: $(STAMP) ## ruff format --check, ruff check and mypy strict
	$(BIN)/ruff format --check . && $(BIN)/ruff check . && $(BIN)/mypy

bench: $(STAMP) ## The pipeline against a floor of the same run: speed, CPU, latency, receiver, growth
	$(BIN)/python -m infra.bench

chaos: $(STAMP) ## 500 images through the local stack under injected faults and kills
	$(BIN)/python -m infra.chaos

flower: $(STAMP) ## Flower on 127.0.0.1:5555 for the stack of make run (its login is in .run/stack.env)
	set -a && . .run/stack.env && set +a && $(BIN)/python -m workers.flower

clean: ## Remove the virtualenv, local stack data and saved images
	rm -rf $(VENV) .run out .pytest_cache .ruff_cache .mypy_cache *.egg-info
