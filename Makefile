# spam-bench entry points. `make` bootstraps .venv on first use; every target depends on it.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
# torch is installed first and on its own, so that no later resolution can pick its build. Without an
# NVIDIA driver the default is PyTorch's CPU wheel index (PyPI's Linux wheel is the multi-GB CUDA build;
# where a local CPU wheel is configured, pip finds it there too). GPU users choose the build:
#   make setup TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
# A changed TORCH_SPEC reinstalls torch (its stamp is named after the spec).
TORCH_VERSION := 2.13.0
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= torch==$(TORCH_VERSION) $(if $(HAS_NVIDIA),,--index-url https://download.pytorch.org/whl/cpu)
EXTRAS ?= rl,tsf,ray,zoo,report,vision,track,cloud,dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.spam-bench-installed
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH_SPEC)' | sha256sum | cut -c1-12)
# torch's own dependencies come from the default index (only the torch wheel from TORCH_SPEC's index):
# the requirements the installed wheel declares, with their markers evaluated here.
TORCH_DEPS := import importlib.metadata as m; from pip._vendor.packaging.requirements import Requirement as R; \
  rs = [R(s) for s in m.requires("torch") or []]; \
  print(" ".join(f"{r.name}{r.specifier}" for r in rs if r.marker is None or r.marker.evaluate({"extra": ""})))

TASK ?= llm
OPT ?= adamw
SEED ?= 0
SCALE ?= tiny
SET ?=
OPTS ?= adamw,spam
SEEDS ?= 0-2
GRID ?=
SWEEP_ARGS ?=
OUT ?=
OUT_FLAG := $(if $(OUT),--out $(OUT),)
# Experiment trackers, e.g. TRACK=tensorboard or TRACK=wandb,mlflow (W&B offline unless WANDB_MODE is set).
TRACK ?=
TRACK_FLAG := $(if $(TRACK),--track $(TRACK),)
SET_FLAGS := $(foreach kv,$(SET),--set $(kv))
GRID_FLAGS := $(foreach kv,$(GRID),--grid $(kv))
comma := ,

# Hub lookups fail offline; make them fail in a second rather than after retries.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup bench sweep sensitivity report results leaderboard perf perf-ray perf-report perf-roofline perf-tasks gpu-check test test-cluster test-fast lint lint-tree lint-imports typecheck clean-venv

setup: $(STAMP)

# Idempotent: torch re-installs only when TORCH_SPEC changes; the rest when the dependency list or the
# constraints (the exact stack the published numbers come from) change.
$(TORCH_STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c constraints.txt $$($(BIN)/python -c '$(TORCH_DEPS)')
	@rm -f $(VENV)/.torch-* && touch $@

$(STAMP): pyproject.toml constraints.txt $(TORCH_STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	$(BIN)/spambench fetch-data --task llm
	@touch $(STAMP)

bench: $(STAMP)
	$(BIN)/spambench run --task $(TASK) --opt $(OPT) --seed $(SEED) --scale $(SCALE) $(SET_FLAGS) $(OUT_FLAG) $(TRACK_FLAG)

# e.g. make sweep TASK=llm OPTS=spam,adamw SEEDS=0-4 GRID='lr=1e-3,3e-3' SWEEP_ARGS='--address auto'
sweep: $(STAMP)
	$(BIN)/spambench sweep --task $(TASK) --opt $(OPTS) --seeds $(SEEDS) --scale $(SCALE) $(GRID_FLAGS) $(SET_FLAGS) $(OUT_FLAG) $(TRACK_FLAG) $(SWEEP_ARGS)

# LR sensitivity (docs/architecture.md#lr-sensitivity): a sweep of the lr over LRS (A..B:N = N log-spaced
# lrs, or a comma list), e.g. make sensitivity TASK=spikes SCALE=smoke LRS=1e-4..1e-1:7; then make report.
# OPTS given on the command line wins over SENSITIVITY_OPTS (sweep's OPTS default is adamw,spam).
SENSITIVITY_OPTS ?= adamw,adam_clip,spam
LRS ?= 1e-4..1e-1:7
sensitivity: $(STAMP)
	$(BIN)/spambench sensitivity --task $(TASK) --opt $(if $(filter command line environment,$(origin OPTS)),$(OPTS),$(SENSITIVITY_OPTS)) --lrs=$(LRS) --seeds $(SEEDS) --scale $(SCALE) $(SET_FLAGS) $(OUT_FLAG) $(TRACK_FLAG) $(SWEEP_ARGS)

report: $(STAMP)
	$(BIN)/spambench report $(OUT_FLAG)

LEADERBOARD_SEEDS ?= 0-2
LEADERBOARD_SWEEP_ARGS ?=
# Comma-separated subset of tasks (e.g. rl,tsf); empty = every registered task. CI shards on it.
LEADERBOARD_TASKS ?=
# The registry's names, read from `spambench list --json` (not from the human-readable listing).
LIST_NAMES = $(BIN)/spambench list $(1) --json | $(BIN)/python -c 'import json, sys; print("$(2)".join(x["name"] for x in json.load(sys.stdin)["$(1)"]))'
# The published results, results/RESULTS.md and its snapshot (runs.parquet, results.parquet, tuned.json),
# from a store added to the snapshot there: findings from the
# paired tests, provenance (code fingerprints, commits) and the commands that remake every run.
# PUBLISH_ARGS=--replace starts the snapshot afresh instead of adding the store's runs to it.
PUBLISH_ARGS ?=
results: $(STAMP)
	$(BIN)/spambench publish $(OUT_FLAG) --into results $(PUBLISH_ARGS)

# Every registered task x every registered optimizer x 3 seeds at the tiny scale, then the report.
leaderboard: $(STAMP)
	@status=0; begin=$$SECONDS; \
	opts=$$($(call LIST_NAMES,optimizers,$(comma))) || exit 1; \
	tasks="$(subst $(comma), ,$(LEADERBOARD_TASKS))"; \
	test -n "$$tasks" || tasks=$$($(call LIST_NAMES,tasks, )) || exit 1; \
	for task in $$tasks; do \
	  echo "leaderboard: $$task x {$$opts} x seeds $(LEADERBOARD_SEEDS)"; start=$$SECONDS; \
	  $(BIN)/spambench sweep --task $$task --opt $$opts --seeds $(LEADERBOARD_SEEDS) --scale tiny $(OUT_FLAG) $(LEADERBOARD_SWEEP_ARGS) || status=1; \
	  echo "leaderboard: $$task took $$(( (SECONDS - start) / 60 )) min $$(( (SECONDS - start) % 60 )) s"; \
	done; \
	$(BIN)/spambench report $(OUT_FLAG) || status=1; \
	echo "leaderboard: $$(( (SECONDS - begin) / 60 )) min in all (runs already complete in the store are not rerun)"; \
	exit $$status

perf: $(STAMP)
	$(BIN)/spambench perf

# One prepared check of the CUDA paths (docs/gpu.md), under 8 min on one H100/H200: the CUDA tests,
# `spambench perf --device cuda`, 200 steps of paper-60m on generated C4-format data (tokens/s, MFU).
# Results in OUT (default out/gpu-check): gpu_check.json, gpu_check.log. DRY_RUN=1: the same on the CPU at
# tiny sizes. No $(STAMP): it never installs anything (a GPU machine needs `make setup TORCH_SPEC=...` first).
DRY_RUN ?=
gpu-check:
	$(BIN)/python -m spam_bench.runners.gpu_check --out $(if $(OUT),$(OUT),out/gpu-check) $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run,)

# Each task's tiny-scale throughput and the split of its time (data, forward/backward, optimizer,
# telemetry, other), shortened runs in fresh processes. AGAINST=<git ref> adds an interleaved A/B.
perf-tasks: $(STAMP)
	$(BIN)/python -m spam_bench.runners.perf_tasks $(if $(AGAINST),--against $(AGAINST) --repeat 2,)

# How close the tiny LMs' forward+backward run to this CPU's fp32 matmul peak, one thread: FLOPs (torch's
# FlopCounterMode), achieved GFLOP/s, the dense kernels' share of the time, and the speed-up ceilings.
perf-roofline: $(STAMP)
	$(BIN)/python -m spam_bench.runners.roofline

# Ray Tune's overhead over the local runner (8 tiny trials).
perf-ray: $(STAMP)
	$(BIN)/python -m spam_bench.runners.overhead

# `spambench report` on a synthetic store of RUNS realistic run folders (a temp folder), measured at a
# quarter, half and all of them: wall time and peak RSS of the report process, e.g. make perf-report RUNS=400.
RUNS ?= 1000
perf-report: $(STAMP)
	$(BIN)/python -m spam_bench.runners.perf_report --runs $(RUNS)

# Two pytest-xdist workers, a test file each at a time (module fixtures such as a Ray cluster or an S3
# server start once per file), so waits on subprocesses, Ray and S3 overlap. TEST_WORKERS=0 runs
# in this process (for a debugger).
TEST_WORKERS ?= 2
TEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: $(STAMP)
	$(BIN)/python -m pytest -q $(TEST_PARALLEL) -m "not cluster" tests

# The tests that start several processes or nodes at once for one thing: a multi-node Ray cluster on
# this machine, torchrun's data-parallel runs, Ray Train worker groups. Each costs tens of seconds of
# process start-up, so they are their own tier, kept out of `make test` (10 minutes on 2 cores);
# `.ci/run` runs both.
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q $(TEST_PARALLEL) -m cluster tests

# The inner loop: everything not marked slow (end-to-end runs, cluster and packaging tests).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(TEST_PARALLEL) -m "not slow and not cluster" tests

# The layer folders sit at the repository root and install as spam_bench.* through setuptools'
# package-dir mapping, which import-graph tools cannot follow; they read a copy laid out as installed.
LINT_TREE := build/lint
lint-tree: $(STAMP)
	@rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)/spam_bench && cp spam_bench/*.py spam_bench/py.typed $(LINT_TREE)/spam_bench/
	@for d in suite optimizers tasks runners reports; do cp -r $$d $(LINT_TREE)/spam_bench/$$d; done

lint-imports: lint-tree
	cd $(LINT_TREE) && PYTHONPATH=$$PWD $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml

typecheck: lint-tree
	cd $(LINT_TREE) && PYTHONPATH=$$PWD $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p spam_bench.suite -p spam_bench.runners

lint: lint-imports typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
