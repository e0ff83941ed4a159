# Two entry points (see README): `make bench` and `make test`. Both build the virtual environment
# first if it is missing or older than pyproject.toml.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
DATA_ROOT ?= $(or $(RNNREG_DATA_ROOT),data)
TASK      ?= all
PRESET    ?= quick
SEED      ?= 0
BENCH_FLAGS ?=

.PHONY: setup bench test leaderboard

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The main job: every task's PRESET with dropout on and off, then the leaderboard beside the paper.
bench: setup
	$(BIN)/bench run --task $(TASK) --preset $(PRESET) --dropout on --seed $(SEED) --data-root $(DATA_ROOT) $(BENCH_FLAGS)
	$(BIN)/bench run --task $(TASK) --preset $(PRESET) --dropout off --seed $(SEED) --data-root $(DATA_ROOT) $(BENCH_FLAGS)
	$(BIN)/bench leaderboard

leaderboard: setup
	$(BIN)/bench leaderboard

test: setup
	RNNREG_DATA_ROOT=$(DATA_ROOT) $(BIN)/python -m pytest -q -p no:cacheprovider
