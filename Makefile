# The README's two commands: `make run` (the demo against the lab) and `make test` (the suite).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
LAB_DIR ?= .lab

.PHONY: deps run test lint bench clean

deps:
	@bash scripts/install-deps.sh

run: deps
	@bash scripts/demo.sh $(LAB_DIR)

test: deps
	@bash scripts/install-helm.sh $(VENV)/tools >/dev/null
	PATH="$(CURDIR)/$(VENV)/tools:$$PATH" $(BIN)/python -m pytest -n 3 --dist loadfile -q $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check .

bench: deps
	$(BIN)/python bench/lab.py

clean:
	-$(BIN)/etcdbot-lab down --dir $(LAB_DIR) --purge 2>/dev/null
	rm -rf $(VENV) .pytest_cache .ruff_cache
