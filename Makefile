# Two entry points (see README): `make bench` and `make test`. Both build the virtual environment
# first if it is missing or older than pyproject.toml.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
DATA_ROOT ?= $(or $(RNNREG_DATA_ROOT),data)
TASK      ?= all
PRESET    ?= quick
SEEDS     ?= 1
LOGGER    ?= csv,wandb
# A fixed folder per preset: `make bench` again after a crash resumes there (finished runs are
# skipped); RUNS_DIR=runs/another starts over.
RUNS_DIR  ?= runs/bench-$(PRESET)
BENCH_FLAGS ?=

.PHONY: setup bench test leaderboard

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The main job: every task's PRESET with dropout on and off, then the leaderboard beside the paper.
# A run that fails (a task whose data is missing and cannot be downloaded) is reported, the others
# still run, the leaderboard is still built, and make fails at the end.
bench: setup
	status=0; $(BIN)/bench run --task $(TASK) --preset $(PRESET) --dropout on,off --seeds $(SEEDS) \
		--logger $(LOGGER) --data-root $(DATA_ROOT) --runs-dir $(RUNS_DIR) --resume $(BENCH_FLAGS) || status=$$?; \
	$(BIN)/bench leaderboard --logger $(LOGGER) --runs-dir $(RUNS_DIR); exit $$status

leaderboard: setup
	$(BIN)/bench leaderboard

test: setup
	RNNREG_DATA_ROOT=$(DATA_ROOT) $(BIN)/python -m pytest -q -p no:cacheprovider
