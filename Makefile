# Two entry points (see README): `make bench` and `make test`. Both build the virtual environment
# first if it is missing or older than pyproject.toml or requirements.lock.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
DATA_ROOT ?= $(or $(RNNREG_DATA_ROOT),data)
TASK      ?= all
PRESET    ?= quick
SEEDS     ?= 1
# Runs at once (bench run --jobs): JOBS=2 trains two runs side by side, a thread each. On 2 cores that
# trained 1.14-1.32x the tokens/s of one run at a time, but short sweeps ended only 0.99-1.14x sooner
# (results/throughput-jobs.csv); 1 keeps every run at the thread count of the reference rows.
JOBS      ?= 1
LOGGER    ?= csv,wandb
# A fixed folder per preset: `make bench` again after a crash resumes there (finished runs are
# skipped); RUNS_DIR=runs/another starts over.
RUNS_DIR  ?= runs/bench-$(PRESET)
# A user's rows and leaderboard; results/ holds the project's published reference (RESULTS_DIR=results
# to add to it).
RESULTS_DIR ?= runs/results
BENCH_FLAGS ?=

.PHONY: setup bench test leaderboard lock

setup: $(VENV)/.installed

# Every dependency at the version and sha256 in requirements.lock, then the project itself. A venv
# that lacks pip (made while python3-venv was missing) is made again, not kept.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PY) -m venv $(VENV); }
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# Re-resolve the lock after changing pyproject.toml's dependencies (needs uv: pip install uv). The
# pins already in the lock are kept where they still fit; --upgrade-package NAME moves one on.
UV ?= $(or $(shell command -v uv),$(BIN)/uv)
lock:
	$(UV) pip compile pyproject.toml --extra test --universal --generate-hashes --python-version 3.11 \
		-o requirements.lock $(LOCK_FLAGS)

# The main job: every task's PRESET with dropout on and off, then the leaderboard beside the paper.
# Whoever types `make bench` has asked for the benchmark, so the captioning data (Flickr8k, 1 GB, the
# one large download the quick presets need) is fetched first, its size and source printed. A run
# that still fails (no network, say) is reported, the others still run, the leaderboard is still
# built, and make fails at the end.
bench: setup
	status=0; \
	if [ "$(PRESET)" = quick ] && echo ",$(TASK)," | grep -qE ',(all|captioning),' \
			&& [ ! -f $(DATA_ROOT)/flickr8k/captions.json ]; then \
		$(BIN)/bench fetch flickr8k --yes --data-root $(DATA_ROOT) || status=$$?; fi; \
	$(BIN)/bench run --task $(TASK) --preset $(PRESET) --dropout on,off --num-seeds $(SEEDS) --jobs $(JOBS) \
		--logger $(LOGGER) --data-root $(DATA_ROOT) --runs-dir $(RUNS_DIR) --results-dir $(RESULTS_DIR) \
		--resume $(BENCH_FLAGS) || status=$$?; \
	$(BIN)/bench leaderboard --logger $(LOGGER) --runs-dir $(RUNS_DIR) --results-dir $(RESULTS_DIR) || status=$$?; \
	if echo ",$(LOGGER)," | grep -q ',wandb,'; then \
		$(BIN)/bench dashboard --runs-dir $(RUNS_DIR) --results-dir $(RESULTS_DIR) || status=$$?; fi; \
	exit $$status

leaderboard: setup
	$(BIN)/bench leaderboard --results-dir $(RESULTS_DIR)

# The real-data tests read RNNREG_DATA_ROOT, else TEST_DATA_ROOT (default ../shared/data); where a
# data set is absent they are skipped, each saying why (-rs). REQUIRE_REAL_DATA=1 (CI) fails instead.
TEST_DATA_ROOT ?= $(or $(RNNREG_DATA_ROOT),../shared/data)
REQUIRE_REAL_DATA ?= 0
test: setup
	RNNREG_DATA_ROOT=$(TEST_DATA_ROOT) RNNREG_REQUIRE_REAL_DATA=$(REQUIRE_REAL_DATA) \
		$(BIN)/python -m pytest -q -rs -p no:cacheprovider
