# Set-up and everyday commands. `make train` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]" --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)  ## train unet_small on the built-in digits (extra Hydra overrides: ARGS="...")
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)  ## the full test suite (what CI runs)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest $(ARGS)  # no busy-waiting threads when tests run processes side by side

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)  ## speed/memory benchmarks (by hand; not part of the tests)
	$(BIN)/python benchmarks/unet_speed.py $(ARGS)

clean:
	rm -rf logs outputs .pytest_cache
