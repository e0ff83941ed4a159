# Two entry points (see README): `make bench` and `make test`. Both build the virtual environment
# first if it is missing or older than pyproject.toml.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
DATA_ROOT ?= $(or $(RNNREG_DATA_ROOT),data)
TASK      ?= all
PRESET    ?= quick
SEED      ?= 0
RUNS_DIR  := runs/bench-$(shell date +%Y%m%d-%H%M%S)
BENCH_FLAGS ?=

.PHONY: setup bench test leaderboard

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The main job: every task's PRESET with dropout on and off, then the leaderboard beside the paper.
# Each `make bench` trains in a new RUNS_DIR, so it never collides with an earlier run's checkpoints.
# A task whose data is missing (and cannot be downloaded) is reported and skipped; the others still
# run, the leaderboard is still built, and make fails at the end.
bench: setup
	status=0; for d in on off; do $(BIN)/bench run --task $(TASK) --preset $(PRESET) --dropout $$d --seed $(SEED) \
		--data-root $(DATA_ROOT) --runs-dir $(RUNS_DIR) $(BENCH_FLAGS) || status=1; done; \
	$(BIN)/bench leaderboard; exit $$status

leaderboard: setup
	$(BIN)/bench leaderboard

test: setup
	RNNREG_DATA_ROOT=$(DATA_ROOT) $(BIN)/python -m pytest -q -p no:cacheprovider
