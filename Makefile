# neurostimd — the two commands a newcomer needs are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DURATION ?= 0
CONFIG ?= config/sim.toml
PYTEST_ARGS ?=

.PHONY: venv test run lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Stamp file: reinstall when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[train,dev,lab,scale]'
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check neurostimd drivers firmware_sim tests tools
	$(BIN)/mypy neurostimd tools/check_layers.py  # neurostimd/drivers and neurostimd/firmware_sim are links to the folders
	$(BIN)/python tools/check_layers.py  # which layer may import which, no import cycles (docs/design.md, "Layers")

run: $(VENV)/.installed
	$(BIN)/python -m neurostimd.commands.demo --config $(CONFIG) --duration $(DURATION)

bench: $(VENV)/.installed
	$(BIN)/neurostimd bench --json bench.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
