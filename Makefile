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

# Two pytest workers, a test file each at a time (`loadfile`: a file's module fixtures are built
# once and the README's commands keep their order), one torch thread per process: the tiny
# models of the tests are faster single-threaded, and the two workers keep both cores busy.
TEST_WORKERS ?= 2

test: $(STAMP)  ## the full test suite (what CI runs)
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

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
